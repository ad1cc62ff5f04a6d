"""Data parallelism on ``torch.distributed``: the service on several processes or machines, exact by default.

- :mod:`streammas.distributed.context`: the group of workers, and the host-side collectives the service uses
"""

from streammas.distributed.context import DistributedContext, resolve_backend

__all__ = ["DistributedContext", "resolve_backend"]
