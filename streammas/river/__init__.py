"""river-compatible estimators: drop streammas into a river pipeline.

* :class:`MASAutoencoder`: a river anomaly detector. The score of a sample is its reconstruction error by
  an autoencoder trained online with Memory Aware Synapses, so a regime that comes back after a long
  absence is still recognised as normal.
* :class:`MASClassifier`: a river classifier (``learn_one(x, y)``, ``predict_one``, ``predict_proba_one``)
  trained online with the same memory.
* :class:`RiverDriftDetector`: a river drift detector in the plateau detector's role.

The two estimators take river's feature dicts. The feature set is fixed by the first sample: features that
appear later are ignored, missing features count as 0 (river's sparse convention). The network is built on
that first sample; learning happens in micro-batches of ``batch_size`` samples (``learn_one`` collects them),
as the plateau detector expects. ``learn_many``/``score_many`` (and the classifier's ``*_many``) take any
dataframe river accepts (pandas, polars, ...), a 2-D array, or a list of dicts.

Threads: the estimators run on torch's thread pool, whose size belongs to the program, so they leave it
alone. On torch's default (one thread per core) the micro-batches of a small network run up to several
times slower than on one thread once other processes share the cores: call ``torch.set_num_threads(1)`` at
the start of a program that runs these estimators (as the examples do), and more threads only for a large
network, measured.

>>> from river import compose, preprocessing
>>> from streammas.river import MASAutoencoder
>>> model = compose.Pipeline(preprocessing.StandardScaler(), MASAutoencoder(seed=0))
>>> for i in range(200):
...     model.learn_one({"a": (i % 7) / 7.0, "b": 1.0 - (i % 7) / 7.0, "c": (i % 3) / 3.0})
>>> normal = model.score_one({"a": 3 / 7, "b": 4 / 7, "c": 1 / 3})
>>> strange = model.score_one({"a": 5.0, "b": 5.0, "c": -4.0})
>>> strange > normal
True
"""

from __future__ import annotations

from streammas.river.autoencoder import MASAutoencoder
from streammas.river.classifier import MASClassifier
from streammas.river.drift import RiverDriftDetector

__all__ = ["MASAutoencoder", "MASClassifier", "RiverDriftDetector"]
