"""The collectives a learner uses in a group of workers, on ``torch.distributed``; below the learner, which is
given one of them:

- :mod:`~streammas.collective.context`: the group of workers, and its host-side collectives;
- :mod:`~streammas.collective.reduce`: the exact mode (every step all-reduced);
- :mod:`~streammas.collective.average`: the averaging mode (local steps, the state averaged every k steps).

The service's launcher and worker, which start and run a group, live with the service
(:mod:`streammas.service.launch`, :mod:`streammas.service.worker`).
"""

from streammas.collective.context import DistributedContext, resolve_backend

__all__ = ["DistributedContext", "resolve_backend"]
