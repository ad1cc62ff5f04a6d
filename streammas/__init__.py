"""streammas: an online learner for unlabeled streams that learns what to remember and what to forget.

>>> import torch
>>> from streammas import OnlineMAS
>>> from streammas.models import MLPAutoencoder
>>> learner = OnlineMAS(MLPAutoencoder(in_features=4, hidden=(8,), latent=2))
>>> learner.learn_many(torch.rand(10, 4)).shape
torch.Size([10])
"""

from __future__ import annotations

import importlib
from typing import Any

from streammas.backend.version import __version__

__all__ = ["Event", "OnlineMAS", "PlateauConfig", "PlateauDetector", "__version__"]

# Imported on first use: `python -m streammas run` must install its signal handlers before torch loads.
_LAZY = {"Event": "streammas.learner.events", "OnlineMAS": "streammas.learner",
         "PlateauConfig": "streammas.learner.plateau", "PlateauDetector": "streammas.learner.plateau"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streammas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
