"""Building the service's model: a built-in one sized from the first sample, or a factory of the user's.

A factory is named ``"package.module:function"`` and called as ``function(sample_shape, **options)`` with
the shape of one sample (a tuple, no batch dimension); it returns a ``torch.nn.Module``. The module is
imported from the configuration file's directory, the working directory, or the installed packages.
:func:`resolve` imports it at start-up, so that a wrong name fails at once and not at the first sample.

Those directories are on ``sys.path`` only while the factory's module is imported and while the factory is
called, never for the rest of the process: a file beside the configuration (a ``zmq.py``, say) must not
shadow a package the service imports later. So the factory's module can import its neighbours at its top or
inside the factory function; an import deferred further (inside a model's ``forward``) does not see them.

The :class:`ModelSpec` (what builds the model, its options, and the sample shape once known) is stored in
every checkpoint, so a restarted service rebuilds the same model before loading its weights.

>>> spec = ModelSpec(kind="mlp-autoencoder", factory=None, options={"latent": 4})
>>> model = spec.build((8, 8))
>>> type(model).__name__, spec.sample_shape
('MLPAutoencoder', [8, 8])
>>> resolve("no_such_module_xyz:make")
Traceback (most recent call last):
...
streammas.service.factory.FactoryError: cannot import the model factory 'no_such_module_xyz:make': No module named ...
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from streammas.service.errors import ServiceError


class FactoryError(Exception):
    """The model factory cannot be imported or does not make a model.

    Raised by :func:`resolve`, :meth:`ModelSpec.check` and :meth:`ModelSpec.build`; the service reports it as
    a configuration error, naming the factory and what went wrong.

    Examples
    --------
    >>> ModelSpec(kind=None, factory="math:pi").build((4,))
    Traceback (most recent call last):
        ...
    streammas.service.factory.FactoryError: the model factory 'math:pi' is not callable
    >>> ModelSpec(kind="conv-autoencoder", factory=None).build((5,))
    Traceback (most recent call last):
        ...
    streammas.service.factory.FactoryError: cannot build a conv-autoencoder for samples of shape (5,): ...
    """


@contextlib.contextmanager
def importable_from(search: Sequence[str]) -> Iterator[None]:
    """``search`` and the working directory first on ``sys.path`` inside the block, as they were after it.

    >>> before = list(sys.path)
    >>> with importable_from(["/nonexistent/models"]):
    ...     sys.path[0]
    '/nonexistent/models'
    >>> sys.path == before
    True
    """
    added = []
    for directory in dict.fromkeys(os.path.abspath(d) for d in [*search, os.getcwd()]):
        if directory not in sys.path:
            added.append(directory)
    sys.path[:0] = added
    try:
        yield
    finally:
        for directory in added:
            with contextlib.suppress(ValueError):  # the factory's code may have removed it itself
                sys.path.remove(directory)


def resolve(spec: str, search: Sequence[str] = ()) -> Callable[..., nn.Module]:
    """The callable ``"package.module:function"`` names; ``search``: directories tried first (on
    ``sys.path`` only during the import, see :func:`importable_from`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise FactoryError(f"a model factory is \"package.module:function\", got {spec!r}")
    try:
        with importable_from(search):
            obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raised while importing
        why = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        raise FactoryError(f"cannot import the model factory {spec!r}: {why}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryError(f"cannot import the model factory {spec!r}: module {module_name!r} has no "
                               f"attribute {attr!r}") from None
    if not callable(obj):
        raise FactoryError(f"the model factory {spec!r} is not callable")
    return obj


@dataclass
class ModelSpec:
    """What builds the model (a built-in ``kind`` or a ``factory``), its options and the sample shape.

    The service makes one from ``[model]`` and builds the model at the first sample; :meth:`as_meta` is
    what a checkpoint stores, and :meth:`same_model` tells whether a checkpoint's model is the configured one.

    Parameters
    ----------
    kind : str or None
        A built-in model (``"mlp-autoencoder"``, ``"conv-autoencoder"``); with neither ``kind`` nor
        ``factory``, an ``mlp-autoencoder``.
    factory : str or None
        ``"package.module:function"``, called as ``function(sample_shape, **options)``; it returns a
        ``torch.nn.Module``.
    options : dict, default {}
        Keyword arguments for the built-in model or the factory.
    sample_shape : list of int or None, default None
        The shape of one sample, set by :meth:`build` (``None``: not known yet).
    search : list of str, default []
        Directories where the factory's module is looked for first (the configuration file's directory).

    Examples
    --------
    A built-in model, and what a checkpoint keeps of it:

    >>> spec = ModelSpec(kind="mlp-autoencoder", factory=None, options={"latent": 4})
    >>> type(spec.build([16])).__name__, spec.sample_shape
    ('MLPAutoencoder', [16])
    >>> spec.as_meta()
    {'kind': 'mlp-autoencoder', 'factory': None, 'options': {'latent': 4}, 'sample_shape': [16]}
    >>> spec.same_model({"kind": "mlp-autoencoder", "factory": None, "options": {"latent": 2}})
    "options: the checkpoint has {'latent': 2}, the configuration {'latent': 4}"

    A factory of one's own, in a module found through ``search``:

    >>> import sys, tempfile, pathlib
    >>> code = "from torch import nn\\ndef make(shape, width=8):\\n    return nn.Linear(shape[0], width)\\n"
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "doc_models.py").write_text(code)
    ...     spec = ModelSpec(kind=None, factory="doc_models:make", options={"width": 3}, search=[d])
    ...     model = spec.build((5,))
    ...     on_path = d in sys.path  # only while importing and calling the factory
    >>> model, spec.name, on_path
    (Linear(in_features=5, out_features=3, bias=True), 'doc_models:make', False)
    >>> del sys.modules["doc_models"]
    """

    kind: str | None
    factory: str | None
    options: dict[str, Any] = field(default_factory=dict)
    sample_shape: list[int] | None = None
    search: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.factory or self.kind or "mlp-autoencoder"

    def check(self) -> None:
        """Fail now (:class:`FactoryError`) if the factory cannot be imported."""
        if self.factory is not None:
            resolve(self.factory, self.search)

    def build(self, sample_shape: Sequence[int]) -> nn.Module:
        """The model for samples of ``sample_shape``; remembers the shape."""
        shape = [int(s) for s in sample_shape]
        if self.factory is not None:
            fn = resolve(self.factory, self.search)
            try:
                with importable_from(self.search):  # the factory may import its neighbours when called
                    model = fn(tuple(shape), **self.options)
            except Exception as e:
                raise FactoryError(f"the model factory {self.factory!r} failed for samples of shape {tuple(shape)}: "
                                   f"{type(e).__name__}: {e}") from e
            if not isinstance(model, nn.Module):
                raise FactoryError(f"the model factory {self.factory!r} returned {type(model).__name__}, "
                                   "not a torch.nn.Module")
        else:
            from streammas.models import build_model

            try:
                model = build_model(self.name, tuple(shape), **self.options)
            except (TypeError, ValueError) as e:
                raise FactoryError(f"cannot build a {self.name} for samples of shape {tuple(shape)}: {e}") from e
        self.sample_shape = shape
        return model

    def build_bounded(self, sample_shape: Sequence[int], max_parameters: int, refuse: type[Exception]) -> nn.Module:
        """:meth:`build`, refused (an exception of type ``refuse``, its message naming ``[model]``) when the model
        would have more than ``max_parameters`` (0: no bound), counted first without allocating anything, or
        when it cannot be built (the factory failed, or an allocation did)."""
        shape = tuple(int(d) for d in sample_shape)
        counted = self.count_parameters(shape) if max_parameters else None
        if counted is not None and counted > max_parameters:
            raise refuse(f"[model] a {self.name} for samples of shape {shape} would have {counted:,} parameters, "
                         f"over max_parameters = {max_parameters:,}")
        try:
            return self.build(shape)
        except FactoryError as e:
            raise refuse(f"[model] {e}") from None
        except (RuntimeError, MemoryError) as e:  # an allocation the bound did not foresee (0: no bound)
            raise refuse(f"[model] cannot build a {self.name} for samples of shape {shape}: {e}") from None

    def count_parameters(self, sample_shape: Sequence[int]) -> int | None:
        """The parameters the model for ``sample_shape`` would have, counted on PyTorch's ``meta`` device, where
        building allocates nothing; ``None`` when the model cannot be built there (the real build will tell)."""
        remembered = self.sample_shape
        try:
            with torch.device("meta"):
                model = self.build(sample_shape)
        except Exception:
            return None
        finally:
            self.sample_shape = remembered
        return sum(p.numel() for p in model.parameters())

    def as_meta(self) -> dict[str, Any]:
        """The part stored in a checkpoint."""
        return {"kind": self.kind or (None if self.factory else "mlp-autoencoder"), "factory": self.factory,
                "options": dict(self.options), "sample_shape": self.sample_shape}

    def same_model(self, meta: dict[str, Any]) -> str | None:
        """Why a checkpoint's model (``meta``) differs from this spec, or ``None`` when they agree."""
        mine = self.as_meta()
        for key in ("kind", "factory", "options"):
            if meta.get(key) != mine[key]:
                return f"{key}: the checkpoint has {meta.get(key)!r}, the configuration {mine[key]!r}"
        return None


def resolve_device(setting: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; other values are checked.

    >>> resolve_device("cpu")
    'cpu'
    """
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError):
        raise ServiceError(f"[learner] device {setting!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ServiceError(f"[learner] device {setting!r}: no CUDA device is available")
    return setting
