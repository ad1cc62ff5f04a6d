"""Task-free continual-learning benchmarks: ``streammas evaluate``.

The package is split by concern:

* :mod:`~streammas.evaluation.streams`: the benchmark streams (data from installed packages only);
* :mod:`~streammas.evaluation.methods`: the methods compared in one run (plain SGD ... i.i.d.);
* :mod:`~streammas.evaluation.metrics`: accuracy/error matrices, forgetting, gap closed, ROC AUC,
  detector timing;
* :mod:`~streammas.evaluation.harness`: runs methods on streams and aggregates over seeds;
* :mod:`~streammas.evaluation.plots`: PNG figures (matplotlib imported lazily);
* :mod:`~streammas.evaluation.cli`: the ``streammas evaluate`` command.
"""

from streammas.evaluation.harness import EvalConfig, evaluate, run_method
from streammas.evaluation.methods import METHODS, Method, default_methods
from streammas.evaluation.streams import BENCHMARKS, Stream, make_stream

__all__ = ["BENCHMARKS", "METHODS", "EvalConfig", "Method", "Stream", "default_methods", "evaluate",
           "make_stream", "run_method"]
