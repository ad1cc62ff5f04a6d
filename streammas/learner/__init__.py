"""The learner and its memory: :class:`OnlineMAS` and the parts it composes.

A batch flows one way through the parts, each owning its state and its ``state_dict``:

- :mod:`~streammas.learner.inputs` and :mod:`~streammas.learner.scaling`: the input guard and the running
  standardisation;
- :mod:`~streammas.learner.update` (with :mod:`~streammas.learner.fused`, the hand-derived step): the score and
  the optimizer's step on the batch and what the memory replays;
- the memory: :mod:`~streammas.learner.replay` (the reservoir), :mod:`~streammas.learner.buffer` (the hard
  buffer), :mod:`~streammas.learner.importance` and :mod:`~streammas.learner.meter` (output sensitivity),
  :mod:`~streammas.learner.synapses` (Omega and theta*), :mod:`~streammas.learner.proximal` (the regulariser);
- :mod:`~streammas.learner.plateau` and :mod:`~streammas.learner.regimes`: when to consolidate;
- :mod:`~streammas.learner.recovery` and :mod:`~streammas.learner.events`.

The collectives of a group of workers live below, in :mod:`streammas.collective`, and are passed in.
"""

from streammas.learner.fused import chain_importance
from streammas.learner.importance.registry import register_chain_importance
from streammas.learner.online import OnlineMAS, learner_defaults, make_optimizer

# output_sensitivity asks the whole-model providers before its per-layer rules. Registered here, at the package's
# front door, which every import of a learner module runs first: the answer never depends on what was imported.
register_chain_importance(chain_importance)

__all__ = ["OnlineMAS", "learner_defaults", "make_optimizer"]
