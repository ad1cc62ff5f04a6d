"""streammas: an online learner for unlabeled streams that learns what to remember and what to forget.

>>> import torch
>>> from streammas import OnlineMAS
>>> from streammas.models import MLPAutoencoder
>>> learner = OnlineMAS(MLPAutoencoder(in_features=4, hidden=(8,), latent=2))
>>> learner.learn_many(torch.rand(10, 4)).shape
torch.Size([10])
"""

from streammas.learner import Event, OnlineMAS
from streammas.plateau import PlateauConfig, PlateauDetector

__all__ = ["Event", "OnlineMAS", "PlateauConfig", "PlateauDetector"]
__version__ = "0.1.0"
