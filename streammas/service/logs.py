"""Structured log lines for the service: ``key=value`` text or JSON, one record per line, on standard error.

Code logs an *event* with fields through :func:`log_event`; libraries that log plain messages (the
connectors, for example) come out in the same format with their message. Text lines read::

    2025-01-01T12:00:00.123Z info  streammas.service checkpoint path=state/ckpt-00000004.pt samples_seen=12000

and JSON lines carry the same content as an object (``ts``, ``level``, ``logger``, ``event``, ``msg`` and the
fields). While a progress bar is on screen, lines are written through ``tqdm.write`` so that the bar stays
intact (see :mod:`streammas.service.progress`).

>>> import io, logging
>>> out = io.StringIO()
>>> handler = make_handler("text", out)
>>> logger = logging.getLogger("streammas.doctest")
>>> logger.addHandler(handler); logger.setLevel(logging.INFO); logger.propagate = False
>>> log_event(logger, "checkpoint", path="state/ckpt-1.pt", samples_seen=10, note="two words")
>>> out.getvalue().split(" ", 1)[1]
'info  streammas.doctest checkpoint path=state/ckpt-1.pt samples_seen=10 note="two words"\\n'
>>> logger.removeHandler(handler)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIELDS = "streammas_fields"
_EVENT = "streammas_event"

#: Set by :mod:`streammas.service.progress` while a bar is shown: writes a line above the bar.
line_writer: Callable[[str, IO[str]], None] | None = None


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, msg: str = "", **fields: Any) -> None:
    """Log ``event`` with ``fields`` (values: numbers, strings, None, lists, dicts)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg or event, extra={_EVENT: event, _FIELDS: fields})


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, separators=(",", ":"), default=str)
    text = "null" if value is None else str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class StructuredFormatter(logging.Formatter):
    """Formats records as ``key=value`` text (``fmt="text"``) or as one JSON object (``fmt="json"``).

    A record logged through :func:`log_event` shows its event and fields; any other record shows its message.
    A record's exception, if any, follows the text line (the ``error`` field of a JSON object).
    :func:`make_handler` and :func:`setup_logging` install it.

    Parameters
    ----------
    fmt : str, default "text"
        ``"text"`` (``time level logger event key=value ...``) or ``"json"`` (one object per line).

    Examples
    --------
    >>> record = logging.makeLogRecord({"name": "connectors.csv_source", "levelname": "WARNING",
    ...                                 "msg": "skipped %d lines", "args": (2,), "created": 0.0})
    >>> StructuredFormatter("text").format(record)
    '1970-01-01T00:00:00.000Z warning connectors.csv_source skipped 2 lines'
    >>> print(StructuredFormatter("json").format(record))
    {"ts": "1970-01-01T00:00:00.000Z", "level": "warning", "logger": "connectors.csv_source", "msg": "skipped 2 lines"}

    An event with fields, through a handler (a non-finite number is ``null`` in JSON):

    >>> import io
    >>> out = io.StringIO()
    >>> handler = logging.StreamHandler(out)
    >>> handler.setFormatter(StructuredFormatter("json"))
    >>> logger = logging.getLogger("streammas.doctest.formatter")
    >>> logger.addHandler(handler); logger.setLevel(logging.INFO); logger.propagate = False
    >>> log_event(logger, "checkpoint", samples_seen=12000, loss=float("nan"))
    >>> obj = json.loads(out.getvalue())
    >>> obj["event"], obj["samples_seen"], obj["loss"]
    ('checkpoint', 12000, None)
    >>> logger.removeHandler(handler)
    """

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
        self.kind = fmt

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, _EVENT, None)
        fields = dict(getattr(record, _FIELDS, None) or {})
        message = record.getMessage()
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        level = record.levelname.lower()
        if self.kind == "json":
            obj: dict[str, Any] = {"ts": _timestamp(record.created), "level": level, "logger": record.name}
            if event:
                obj["event"] = event
            if message and message != event:
                obj["msg"] = message
            obj.update({k: _json_value(v) for k, v in fields.items()})
            return json.dumps(obj, default=str)
        head = f"{_timestamp(record.created)} {level:<5} {record.name}"
        if event:
            parts = [head, event]
            if message and message != event:
                parts.append(f"msg={_text_value(message)}")
        else:
            parts = [head, message]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items() if k != "error"]
        line = " ".join(parts)
        if "error" in fields:
            line += "\n" + fields["error"]
        return line


class _Handler(logging.StreamHandler):
    """A stream handler that goes around an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        writer = line_writer
        if writer is None:
            super().emit(record)
            return
        try:
            writer(self.format(record), self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing structured lines to ``stream`` (standard error by default)."""
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    return handler


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Route the root logger (and so every library's) to one structured handler; returns it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):
            root.removeHandler(old)
    handler = make_handler(fmt, stream)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    return handler


@contextlib.contextmanager
def logging_to(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> Iterator[logging.Handler]:
    """:func:`setup_logging` for the duration of a ``with`` block; the root logger is restored after it."""
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    handler = setup_logging(level, fmt, stream)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for h in old_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(old_level)
