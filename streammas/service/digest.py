"""The content digest of a checkpoint: SHA-256 over what it holds, not over the file's bytes.

The digest covers every tensor's dtype, shape and bytes and every number and string, in an order that does not
depend on how a dict was built, so that it is the same after ``torch.save`` and ``torch.load``, and a damaged
file is detected even where the zip container would load it (``torch.load`` does not verify the tensors' bytes).
Each value is fed with a tag of its kind (and its length where it has one), so that two different structures
never feed the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["content_digest"]


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        h.update(b"D%d" % len(value))
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value) if isinstance(value, list) else b"U%d" % len(value))
        for item in value:
            _feed(h, item)
    elif isinstance(value, bool) or value is None:
        h.update(repr(value).encode())
    elif isinstance(value, int):
        h.update(b"I" + str(value).encode() + b";")
    elif isinstance(value, float):
        h.update(b"F" + struct.pack("<d", value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(value, bytes):
        h.update(b"B%d:" % len(value) + value)
    elif isinstance(value, (torch.dtype, torch.device, torch.Size)):
        h.update(b"O" + repr(value).encode() + b";")
    else:
        raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def content_digest(value: Any) -> str:
    """SHA-256 over the content of nested dicts, lists, tensors and scalars (stable across save/load).

    Raises ``TypeError`` for a value of any other type (a checkpoint holds plain data and tensors only).

    >>> content_digest({"a": torch.zeros(2), "b": [1, 2.5, "x"]}) == content_digest({"b": [1, 2.5, "x"],
    ...                                                                          "a": torch.zeros(2)})
    True
    >>> content_digest({"a": torch.zeros(2)}) == content_digest({"a": torch.ones(2)})
    False
    >>> content_digest([1]) == content_digest((1,))  # tagged apart: a list is not a tuple
    False
    """
    h = hashlib.sha256()
    _feed(h, value)
    return "sha256:" + h.hexdigest()
