"""The collectives a learner uses in a group of workers, on ``torch.distributed``; below the learner, which is
given one of them:

- :mod:`~streammas.collective.alone`: a learner alone (the collective that exchanges nothing), and what every
  collective hands the learner (the step's rows, a period's values);
- :mod:`~streammas.collective.context`: the group of workers, and its host-side collectives;
- :mod:`~streammas.collective.reduce`: the exact mode (every step all-reduced);
- :mod:`~streammas.collective.average`: the averaging mode (local steps, the state averaged every k steps).

The service's launcher and worker, which start and run a group, live with the service
(:mod:`streammas.service.launch`, :mod:`streammas.service.worker`).
"""

from __future__ import annotations

from streammas.collective.alone import Alone, Period, StepRows
from streammas.collective.average import AveragingGroup
from streammas.collective.context import DistributedContext, resolve_backend
from streammas.collective.reduce import ExactGroup

__all__ = ["Alone", "AveragingGroup", "DistributedContext", "ExactGroup", "Period", "StepRows", "collective_for",
           "resolve_backend"]


def collective_for(distributed: DistributedContext | None) -> Alone:
    """The collective of a learner given ``distributed`` (``None``, or a group of one: alone).

    >>> type(collective_for(None)).__name__
    'Alone'
    """
    if distributed is None or distributed.world_size <= 1:
        return Alone()
    return ExactGroup(distributed) if distributed.mode == "exact" else AveragingGroup(distributed)
