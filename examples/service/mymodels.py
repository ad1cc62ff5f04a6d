"""An example model factory for ``[model] factory = "mymodels:make"``.

The service calls ``make(sample_shape, **options)`` once it has seen the first sample (or, on a restart,
with the shape recorded in the checkpoint) and trains what it returns. For the default reconstruction
objective the output must have the input's shape.
"""

import math

from torch import nn


def make(sample_shape, hidden=64, latent=8):
    n = math.prod(sample_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, latent), nn.ReLU(),
        nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n),
        nn.Unflatten(1, tuple(sample_shape)),
    )
