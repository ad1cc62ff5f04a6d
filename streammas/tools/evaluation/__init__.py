"""Task-free continual-learning benchmarks: ``streammas evaluate``.

The package is split by concern:

* :mod:`~streammas.tools.evaluation.streams`: the benchmark streams (data from installed packages only);
* :mod:`~streammas.tools.evaluation.heldout`: the held-out streams (raw units, wide inputs, noise, time series);
* :mod:`~streammas.tools.evaluation.stress`: the stress streams, where one memory must beat another (many regimes,
  rare ones, regimes that never return, a recurring fault, gradual drift; ``--benchmarks stress``);
* :mod:`~streammas.tools.evaluation.methods`: the methods compared in one run (plain ... i.i.d.);
* :mod:`~streammas.tools.evaluation.baseline`: the practitioner's baseline (Adam, standardisation, replay);
* :mod:`~streammas.tools.evaluation.metrics`: accuracy/error matrices, forgetting, gap closed, ROC AUC,
  detector timing;
* :mod:`~streammas.tools.evaluation.stress_metrics`: the stress streams' own (rare regimes, recovery from a
  permanent change, anomaly AUC at a rare regime's return and at a fault's recurrence, memory bytes);
* :mod:`~streammas.tools.evaluation.harness`: runs methods on streams;
* :mod:`~streammas.tools.evaluation.summary`: aggregates over seeds, compares methods, checks the targets;
* :mod:`~streammas.tools.evaluation.plots`: PNG figures (matplotlib imported lazily);
* :mod:`~streammas.tools.evaluation.cli`: the ``streammas evaluate`` command.
"""

from streammas.tools.evaluation.harness import EvalConfig, evaluate, run_method
from streammas.tools.evaluation.methods import METHODS, Method, default_methods
from streammas.tools.evaluation.streams import BENCHMARKS, Stream, make_stream

__all__ = ["BENCHMARKS", "METHODS", "EvalConfig", "Method", "Stream", "default_methods", "evaluate",
           "make_stream", "run_method"]
