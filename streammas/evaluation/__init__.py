"""Task-free continual-learning benchmarks: ``streammas evaluate``.

The package is split by concern:

* :mod:`~streammas.evaluation.streams`: the benchmark streams (data from installed packages only);
* :mod:`~streammas.evaluation.heldout`: the held-out streams (raw units, wide inputs, noise, time series);
* :mod:`~streammas.evaluation.methods`: the methods compared in one run (plain ... i.i.d.);
* :mod:`~streammas.evaluation.baseline`: the practitioner's baseline (Adam, standardisation, replay);
* :mod:`~streammas.evaluation.metrics`: accuracy/error matrices, forgetting, gap closed, ROC AUC,
  detector timing;
* :mod:`~streammas.evaluation.harness`: runs methods on streams;
* :mod:`~streammas.evaluation.summary`: aggregates over seeds, compares methods, checks the targets;
* :mod:`~streammas.evaluation.plots`: PNG figures (matplotlib imported lazily);
* :mod:`~streammas.evaluation.cli`: the ``streammas evaluate`` command.
"""

from streammas.evaluation.harness import EvalConfig, evaluate, run_method
from streammas.evaluation.methods import METHODS, Method, default_methods
from streammas.evaluation.streams import BENCHMARKS, Stream, make_stream

__all__ = ["BENCHMARKS", "METHODS", "EvalConfig", "Method", "Stream", "default_methods", "evaluate",
           "make_stream", "run_method"]
