"""A file source read ahead in a child process, so that parsing runs on another core than the learning.

:class:`ProcessSource` starts :mod:`connectors.prefetch_child`, which opens the source by URI (the same options
and position) and sends its batches through a pipe, up to 16 to a message, each with what the source said right
after it (its position, its counts, whether it is finished); the parent hands the batches on in order, and its
``position`` and ``counters`` are those of the last batch it handed on, exactly as the source's own would be. The
pipe holds 1 MiB and the child waits while it is full, so memory stays bounded. The child's log records (rejected
rows) are logged again by the parent under the same logger names.

Only a source whose position says exactly where to open it again fits: the file sources (``csv:``, ``jsonl:``,
``npy:``, ``npz:``). What the child read ahead and the parent never took is simply read again from the last
position handed on: at a stop, after the child died (it is started again from there), and after
:meth:`ProcessSource.forget_sample_shape`. A broker that must be acknowledged, or a socket, does not fit.

Nothing is unpickled: a message is a JSON header and the arrays' raw bytes.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import math
import os
import select
import site
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from connectors.base import Batch, Source
from connectors.prefetch_child import unpack

_log = logging.getLogger(__name__)

#: The pipe's capacity asked for (Linux allows up to 1 MiB without privileges).
PIPE_BYTES = 1 << 20
#: Children started again in a row without a batch handed on in between, before the source gives up.
MAX_RESTARTS = 3


def _child_env() -> dict[str, str]:
    """The environment of the reader process: this one's, with the folder holding ``connectors`` on the path where
    it is not a site folder already (a checkout, or an editable install; never ahead of the standard library)."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in sites:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def _summed(carried: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    """Counts of the children before this one (``carried``) and of this one, key by key."""
    total = dict(carried)
    for key, value in now.items():
        total[key] = total.get(key, 0) + value
    return total


def _raise(header: dict[str, Any]) -> None:
    """The child's exception, raised again here as its nearest built-in type."""
    kind = getattr(builtins, header["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        raise RuntimeError(f"{header['type']}: {header['message']}")
    try:
        error = kind(*header["args"]) if "args" in header else kind(header["message"])
    except Exception:
        error = kind(header["message"])
    raise error


def _view(data: bytearray, dtype: str, shape: list[int], offset: int) -> np.ndarray:
    """An array of the message ``data`` at ``offset``: a view, or a copy where the view would not be aligned."""
    array = np.frombuffer(data, dtype, math.prod(shape), offset).reshape(shape)
    return array if array.flags.aligned else array.copy()


class ProcessSource(Source):
    """A source opened by URI and read ahead in a child process (see the module doc).

    Parameters
    ----------
    uri : str
        The source's URI, one the child opens with :func:`connectors.registry.open_source` (a file scheme).
    batch_size, max_latency_ms, position, **options
        What ``open_source`` takes; ``options`` must be JSON values.
    start_timeout : float, default 60.0
        Seconds to wait for the child to open the source.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "data.csv").write_text("a,b\\n1,2\\n3,x\\n5,6\\n")
    ...     with ProcessSource(f"csv:{d}/data.csv", batch_size=8) as src:
    ...         batches = list(src)
    >>> [b.x.tolist() for b in batches], src.counters["rejected:parse"], src.position["line"]
    ([[[1.0, 2.0], [5.0, 6.0]]], 1, 4)
    """

    def __init__(self, uri: str, *, batch_size: int = 32, max_latency_ms: float = 50.0,
                 position: dict | None = None, start_timeout: float = 60.0, **options: Any) -> None:
        self.name = uri
        self._spec = {"uri": uri, "kwargs": {"batch_size": batch_size, "max_latency_ms": max_latency_ms, **options}}
        json.dumps(self._spec)  # options must cross the pipe as JSON: fail here, not in the child
        self._start_timeout = float(start_timeout)
        self._position = position
        # counts of the children before this one, up to the last batch each handed on; then this one's
        self._carried: dict[str, int] = {}
        self._carried_failed: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._examples: dict[str, str] = {}
        self._finished = self._closed = False
        self._queue: deque[tuple[Batch, dict[str, Any]]] = deque()
        self._restarts = 0
        self.finite = True
        self.size_hint: int | None = None
        self.feature_columns: list[str] | None = None
        self._process: subprocess.Popen | None = None
        self._forgets = False
        self._start()

    # -- the child -----------------------------------------------------------------------------------
    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        control_read, control_write = os.pipe()
        # Room for a few hundred batches: the child parses in blocks, and with the 64 KiB default it would wait
        # on a full pipe while the parent, having emptied it, waits on the child's next block.
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        spec = {**self._spec, "kwargs": {**self._spec["kwargs"], "position": self._position}}
        level = logging.getLogger().getEffectiveLevel()
        try:
            # -P: nothing from the working directory (where the data is) shadows a module. A session of its own:
            # a terminal's Ctrl-C or hang-up reaches the daemon, which stops its reader itself.
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "connectors.prefetch_child", str(write_fd), str(control_read),
                 str(level), json.dumps(spec)],
                pass_fds=(write_fd, control_read), env=_child_env(), stdin=subprocess.DEVNULL,
                start_new_session=True)
        except BaseException:
            os.close(read_fd)
            os.close(control_write)
            raise
        finally:
            os.close(write_fd)
            os.close(control_read)
        self._conn = Connection(read_fd, writable=False)
        self._control = Connection(control_write, readable=False)
        self._poller = select.poll()  # made once: Connection.poll makes a selector at every call
        self._poller.register(read_fd, select.POLLIN)
        header = self._await("opened", "open the source")
        self.finite, self.size_hint, self._forgets = header["finite"], header["size_hint"], header["forgets"]
        self._describe(header["described"])
        if self._position is None:
            self._position = header["position"]

    def _await(self, kind: str, what: str) -> dict[str, Any]:
        """The child's next message of ``kind``, dropping batches and states on the way (read ahead of a position
        it reads again from)."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            if not self._ready(deadline - time.monotonic()):
                self._stop_child()
                raise TimeoutError(f"{self.name}: the reader process did not {what} in {self._start_timeout:g} s")
            try:
                header, _ = unpack(self._conn.recv_bytes())
            except (EOFError, OSError):
                code = self._stop_child()
                raise RuntimeError(f"{self.name}: the reader process exited ({code}) before it could "
                                   f"{what}") from None
            if header["kind"] == kind:
                return header
            if header["kind"] in ("error", "log"):
                self._handle(header)

    def _ready(self, timeout: float | None) -> bool:
        """Whether a message (or the end of the pipe) is there to read, waiting up to ``timeout`` seconds."""
        return bool(self._poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))

    def _stop_child(self) -> int | None:
        self._conn.close()
        self._control.close()
        self._queue.clear()  # read ahead, never handed on: the next child reads it again
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()  # it holds nothing worth keeping: what it read ahead is read again
        return process.wait()

    def _restart(self, why: str) -> None:
        self._restarts += 1
        if self._restarts > MAX_RESTARTS:
            raise RuntimeError(f"{self.name}: the reader process {why} {MAX_RESTARTS + 1} times without a batch")
        _log.warning("%s: the reader process %s; reading again from the last batch handed on", self.name, why)
        self._carry()
        self._start()

    def _carry(self) -> None:
        """Keep the counts up to the last batch handed on: the next child reads again from there."""
        self._carried, self._carried_failed = dict(self.counters), self.failed_columns
        self._counters, self._failed = {}, {}

    # -- messages --------------------------------------------------------------------------------------
    def _handle(self, header: dict[str, Any]) -> None:
        kind = header["kind"]
        if kind in ("end", "state"):  # sent once every batch before it was handed on
            self._counters = header["counters"]
            self._describe(header["described"])
            if kind == "end":
                self._position, self._finished = header["position"], True
        elif kind == "log":
            logging.getLogger(header["logger"]).log(header["level"], "%s", header["message"])
        elif kind == "error":
            self._stop_child()
            _raise(header)

    def _describe(self, described: dict[str, Any]) -> None:
        for reason, example in described["reject_examples"].items():
            self._examples.setdefault(reason, example)  # the first reject's, as the log said first
        self._failed = described["failed_columns"]
        self.feature_columns = described["feature_columns"]

    def _receive(self) -> None:
        """One message: batches onto the queue, or what another kind says."""
        message = self._conn.recv_bytes()
        header, offset = unpack(message)
        if header["kind"] != "batches":
            self._handle(header)
            return
        # one writable copy of the message, each batch's arrays views of it (a copy per array cost more)
        data = bytearray(message)
        for item in header["batches"]:
            shape = item["shape"]
            x = _view(data, item["dtype"], shape, offset)
            offset += x.nbytes
            y = None
            if item["y_dtype"] is not None:
                y = _view(data, item["y_dtype"], shape[:1], offset)
                offset += y.nbytes
            self._queue.append((Batch(x, y, item["position"]), item))

    def _hand_on(self, batch: Batch, item: dict[str, Any]) -> Batch:
        """``batch``, with what the source said right after it made the source's own state."""
        self._position = batch.position
        if "counters" in item:
            self._counters = item["counters"]
        else:  # what changes with every batch is counted here: the child sends the rest when it changes
            self._counters["samples"] = self._counters.get("samples", 0) + len(batch)
            self._counters["batches"] = self._counters.get("batches", 0) + 1
        if "described" in item:
            self._describe(item["described"])
        self._finished = item["finished"]
        self._restarts = 0
        return batch

    # -- Source ----------------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Batch | None:
        if self._closed:
            raise ValueError(f"read from closed source {self.name}")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._queue:
            if self._finished:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._ready(left):
                return None
            try:
                self._receive()
            except (EOFError, OSError):  # the child is gone, its last message whole or cut short
                code = self._stop_child()
                self._restart(f"exited ({code})")
                continue
            if not self._queue and deadline is not None and time.monotonic() >= deadline:
                return None
        return self._hand_on(*self._queue.popleft())

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def position(self) -> dict | None:
        return self._position

    @property
    def counters(self) -> Mapping[str, int]:
        return _summed(self._carried, self._counters) or {"samples": 0, "batches": 0}

    @property
    def reject_examples(self) -> dict[str, str]:
        return dict(self._examples)

    @property
    def failed_columns(self) -> dict[str, int]:
        return _summed(self._carried_failed, self._failed)

    def drain(self, timeout: float) -> Iterable[Batch]:
        """Nothing: what the child read ahead is read again from :attr:`position` by the next run."""
        return []

    def forget_sample_shape(self) -> None:
        """Where the source fixes a shape from its first samples (JSON Lines), have the child open it again from
        the last batch handed on, with none fixed; what it read ahead is dropped and read again."""
        if not self._forgets or self._finished:
            return
        self._carry()
        self._queue.clear()
        try:
            self._control.send_bytes(json.dumps({"position": self._position}).encode())
            self._describe(self._await("reopened", "open the source again")["described"])
        except (OSError, RuntimeError):  # it was gone, or went: a new one opens the source at the position
            self._stop_child()
            self._start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_child()

    def __repr__(self) -> str:
        return f"<ProcessSource {self.name}>"
