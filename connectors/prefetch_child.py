"""The reader process of :class:`connectors.prefetch.ProcessSource`, and the messages it sends.

``python -P -m connectors.prefetch_child OUT CONTROL LEVEL SPEC`` opens the source ``SPEC`` names and sends
its batches to the pipe ``OUT`` until the source is finished or the parent is gone. A message is a 4-byte
length, a JSON header and the arrays' raw bytes (nothing is pickled), of one kind:

- ``opened``: the source opened (whether it ends, its position, what it says of its input, whether it
  forgets a sample shape); ``error``: it could not be opened or read (the exception's type and arguments);
- ``batches``: up to :data:`GROUP_BATCHES` batches, each with what the source said right after it (its
  position, whether it is finished, its counts where they changed beyond ``samples`` and ``batches``);
- ``state``: the counts, where input was turned away and no batch came after it (a followed file);
- ``end``: the source is finished, with its last position and counts; ``log``: a log record;
- ``reopened``: the answer to a ``reopen`` message on ``CONTROL``, after which the child reads from the
  position that message gave, with a new source (no sample shape fixed).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import select
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from connectors.base import Source

#: The most batches, and about the most bytes, the child sends in one message.
GROUP_BATCHES = 16
GROUP_BYTES = 256 << 10
#: Counters that grow with every batch, kept by the parent itself.
PER_BATCH = ("samples", "batches")
#: Seconds a read waits before the child looks at its parent and its control pipe again.
POLL_S = 0.5


def pack(header: dict[str, Any], *arrays: np.ndarray) -> bytes:
    """A message: the header's length (4 bytes, little-endian), the header as JSON (padded with spaces), the arrays'
    bytes."""
    head = json.dumps(header).encode()
    head += b" " * (-(4 + len(head)) % 16)  # the first array at a 16-byte boundary, where the parent can view it
    return b"".join([len(head).to_bytes(4, "little"), head, *(np.ascontiguousarray(a).tobytes() for a in arrays)])


def unpack(message: bytes) -> tuple[dict[str, Any], int]:
    """A message's header, and the offset of its first array.

    >>> unpack(pack({"kind": "log"}, np.zeros(2)))
    ({'kind': 'log'}, 32)
    """
    size = int.from_bytes(message[:4], "little")
    return json.loads(message[4:4 + size]), 4 + size


def error_header(e: BaseException) -> dict[str, Any]:
    """An exception as the parent raises it again: the nearest built-in type, and its arguments where they are
    JSON (an ``OSError``'s errno, message and file name, so that the parent's is alike)."""
    kind = next(c for c in type(e).__mro__ if getattr(builtins, c.__name__, None) is c)
    header: dict[str, Any] = {"kind": "error", "type": kind.__name__, "message": str(e)}
    args = list(e.args)
    if isinstance(e, OSError) and e.errno is not None and e.filename is not None:  # not part of args
        args = [e.errno, e.strerror, e.filename] + ([None, e.filename2] if e.filename2 is not None else [])
    with contextlib.suppress(TypeError, ValueError):
        header["args"] = json.loads(json.dumps(args))
    return header


def described(source: Source) -> dict[str, Any]:
    """What the source says of its input besides counts (what ``streammas run`` sums up at the end)."""
    return {"reject_examples": dict(getattr(source, "reject_examples", None) or {}),
            "failed_columns": dict(getattr(source, "failed_columns", None) or {}),
            "feature_columns": getattr(source, "feature_columns", None)}


class _PipeLog(logging.Handler):
    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the read loop notices
            self.conn.send_bytes(pack({"kind": "log", "logger": record.name, "level": record.levelno,
                                       "message": record.getMessage()}))


class _Reader:
    """The child's loop over one source at a time."""

    def __init__(self, out: Connection, control: int, spec: dict[str, Any]) -> None:
        self.out, self.spec = out, spec
        self.control = select.poll()
        self.control.register(control, select.POLLIN)
        self.control_conn = Connection(control, writable=False)
        self.items: list[dict[str, Any]] = []
        self.arrays: list[np.ndarray] = []

    def open(self, position: dict | None) -> Source:
        from connectors.registry import open_source

        source = open_source(self.spec["uri"], **{**self.spec["kwargs"], "position": position})
        self.sent_counts: dict[str, int] | None = None
        self.sent_described = described(source)
        return source

    def flush(self) -> None:
        if self.items:
            self.out.send_bytes(pack({"kind": "batches", "batches": self.items}, *self.arrays))
            self.items, self.arrays = [], []

    def add(self, source: Source, batch: Any) -> None:
        item = {"shape": list(batch.x.shape), "dtype": str(batch.x.dtype), "position": batch.position,
                "y_dtype": None if batch.y is None else str(batch.y.dtype), "finished": source.finished}
        item.update(self.changes(source))
        self.items.append(item)
        self.arrays += [batch.x] if batch.y is None else [batch.x, batch.y]

    def changes(self, source: Source) -> dict[str, Any]:
        """The counts and descriptions that changed since they were last sent (beyond one batch's counts)."""
        out: dict[str, Any] = {}
        counts = dict(source.counters)
        others = {k: v for k, v in counts.items() if k not in PER_BATCH}
        if others != self.sent_counts:
            out["counters"], self.sent_counts = counts, others
        now = described(source)
        if now != self.sent_described:
            out["described"] = self.sent_described = now
        return out

    def reopen_asked(self) -> dict | None:
        """The message on the control pipe, where there is one (``{"position": ...}``)."""
        if not self.control.poll(0):
            return None
        return json.loads(self.control_conn.recv_bytes())

    def run(self, parent: int) -> int:
        source = self.open(self.spec["kwargs"].get("position"))
        self.out.send_bytes(pack({"kind": "opened", "finite": bool(getattr(source, "finite", False)),
                                  "size_hint": getattr(source, "size_hint", None), "position": source.position,
                                  "described": self.sent_described,
                                  "forgets": type(source).forget_sample_shape is not Source.forget_sample_shape}))
        try:
            while os.getppid() == parent:
                asked = self.reopen_asked()
                if asked is not None:  # what was read ahead is the parent's to drop: it reads on from there
                    self.items, self.arrays = [], []
                    source.close()
                    source = self.open(asked["position"])
                    self.out.send_bytes(pack({"kind": "reopened", "described": self.sent_described}))
                    continue
                # what is ready goes together, up to a group: a message per batch would cost the parent more
                batch = source.read(timeout=0.0 if self.items else POLL_S)
                full = len(self.items) == GROUP_BATCHES or sum(a.nbytes for a in self.arrays) > GROUP_BYTES
                if batch is None or full:
                    self.flush()
                if batch is not None:
                    self.add(source, batch)
                elif source.finished:  # what came after the last batch (rejected rows) counts too
                    self.out.send_bytes(pack({"kind": "end", "position": source.position,
                                              "counters": dict(source.counters), "described": described(source)}))
                    return 0
                else:
                    changed = self.changes(source)
                    if "counters" in changed:  # input turned away while no batch comes (a followed file)
                        changed.setdefault("described", self.sent_described)
                        self.out.send_bytes(pack({"kind": "state", **changed}))
        except Exception:
            self.flush()  # the batches read before the error are the parent's, as they would be inline
            raise
        finally:
            source.close()
        return 0


def serve(out_fd: int, control_fd: int, level: int, spec: dict[str, Any]) -> int:
    """The child: open the source, send its batches until it is finished or the parent is gone."""
    # A terminal's Ctrl-C or hang-up, or a service manager's SIGTERM, reaches every process of the group: the
    # parent decides when its reader stops.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    out = Connection(out_fd, readable=False)
    parent = os.getppid()
    root = logging.getLogger()
    root.handlers[:] = [_PipeLog(out)]
    root.setLevel(level)
    try:
        return _Reader(out, control_fd, spec).run(parent)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    except Exception as e:
        with contextlib.suppress(OSError):
            out.send_bytes(pack(error_header(e)))
        return 1


if __name__ == "__main__":
    raise SystemExit(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))
