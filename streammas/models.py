"""Ready-made models, and :func:`build_model` which sizes one from the first sample of a stream.

The autoencoders expose ``encoder`` and ``decoder`` submodules, so that importance can be measured on the
code layer (``importance_output="encoder"``) as well as on the reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from streammas.learner.fused import encoder_decoder_chain, register_chain
from streammas.learner.importance.registry import register_mode_free


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPAutoencoder(nn.Module):
    """A fully connected autoencoder; samples of any shape are flattened and the output takes their shape.

    The encoder maps the ``in_features`` inputs through the ``hidden`` widths to a code of ``latent`` units; the
    decoder mirrors it.

    Parameters
    ----------
    in_features : int
        Number of inputs, the size of a flattened sample.
    hidden : sequence of int, default (128,)
        Widths of the encoder's hidden layers (the decoder's in reverse order).
    latent : int, default 16
        Size of the code layer.

    Attributes
    ----------
    encoder : torch.nn.Sequential
        From the flattened sample to the code.
    decoder : torch.nn.Sequential
        From the code back to the flattened sample.

    Examples
    --------
    >>> model = MLPAutoencoder(in_features=64, hidden=(128,), latent=16)
    >>> model(torch.zeros(5, 64)).shape
    torch.Size([5, 64])
    >>> model(torch.zeros(5, 8, 8)).shape
    torch.Size([5, 8, 8])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), latent: int = 16) -> None:
        super().__init__()
        self.in_features = int(in_features)
        sizes = [self.in_features, *hidden, latent]
        self.encoder = _mlp(sizes)
        self.decoder = _mlp(sizes[::-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return self.decoder(self.encoder(flat)).reshape(x.shape)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder for images ``[B, C, H, W]`` (``[B, H, W]`` is read as one channel).

    Each stage halves the resolution; the decoder mirrors it and the output is cropped to the input size,
    so any image size works.

    Parameters
    ----------
    in_channels : int, default 1
        Channels of the input images.
    channels : sequence of int, default (16, 32)
        Channels of the encoder's stages, each a stride-2 convolution (the decoder's in reverse order).
    kernel_size : int, default 3
        Size of every convolution's kernel.

    Attributes
    ----------
    encoder : torch.nn.Sequential
        The convolutions, from the image to the code.
    decoder : torch.nn.Sequential
        The transposed convolutions, from the code back to the image.

    Examples
    --------
    >>> model = ConvAutoencoder(in_channels=1, channels=(8, 16))
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    >>> model(torch.zeros(2, 7, 9)).shape
    torch.Size([2, 7, 9])
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        pad = kernel_size // 2
        widths = [self.in_channels, *channels]
        enc: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=pad), nn.ReLU()]
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for i, (c_in, c_out) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.ConvTranspose2d(c_in, c_out, kernel_size, stride=2, padding=pad, output_padding=1))
            if i < len(rev) - 2:
                dec.append(nn.ReLU())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.unsqueeze(1) if x.dim() == 3 else x
        out = self.decoder(self.encoder(images))
        out = out[..., : images.shape[-2], : images.shape[-1]]
        return out.reshape(x.shape)


class MLPClassifier(nn.Module):
    """A fully connected classifier returning logits.

    Samples of any shape are flattened.

    Parameters
    ----------
    in_features : int
        Number of inputs, the size of a flattened sample.
    n_classes : int
        Number of classes, the size of the logits.
    hidden : sequence of int, default (128,)
        Widths of the hidden layers.

    Examples
    --------
    >>> MLPClassifier(in_features=64, n_classes=10)(torch.zeros(3, 8, 8)).shape
    torch.Size([3, 10])
    """

    def __init__(self, in_features: int, n_classes: int, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.net = _mlp([self.in_features, *hidden, n_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


MODEL_KINDS = ("mlp-autoencoder", "conv-autoencoder")


def autoencoder_sizes(in_features: int) -> tuple[tuple[int, ...], int]:
    """Hidden widths and code size for an MLP autoencoder over ``in_features`` inputs.

    >>> autoencoder_sizes(784)
    ((256,), 64)
    >>> autoencoder_sizes(64)
    ((128,), 16)
    """
    hidden = min(256, max(16, 2 * in_features))
    latent = min(64, max(2, in_features // 4))
    return (hidden,), latent


def build_model(kind: str, sample_shape: Sequence[int], **kwargs) -> nn.Module:
    """A built-in model sized from the shape of one sample (without the batch dimension).

    >>> build_model("mlp-autoencoder", (8, 8))
    MLPAutoencoder(...)
    >>> build_model("conv-autoencoder", (3, 16, 16)).in_channels
    3
    """
    shape = tuple(int(s) for s in sample_shape)
    if kind == "mlp-autoencoder":
        in_features = math.prod(shape)
        hidden, latent = autoencoder_sizes(in_features)
        kwargs.setdefault("hidden", hidden)
        kwargs.setdefault("latent", latent)
        return MLPAutoencoder(in_features, **kwargs)
    if kind == "conv-autoencoder":
        if len(shape) not in (2, 3):
            raise ValueError(f"conv-autoencoder needs image samples [C, H, W] or [H, W], got shape {shape}")
        return ConvAutoencoder(in_channels=shape[0] if len(shape) == 3 else 1, **kwargs)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


# No dropout and no batch statistics in any of them: a learner may serve the importance from the training
# forward of these models (streammas.learner.importance.is_mode_free).
register_mode_free(MLPAutoencoder, ConvAutoencoder, MLPClassifier)
# The hand-derived step reads an MLPAutoencoder as the chain of its encoder and its decoder.
register_chain(MLPAutoencoder)(encoder_decoder_chain)
