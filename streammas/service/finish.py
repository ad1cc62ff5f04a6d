"""The end of a finite source: whether it yielded anything to learn, and if not, why.

A file with no valid row is almost always a configuration to fix (a timestamp column left among the features,
the wrong file), not a stream that ended: the service says what it turned away, by reason and with the first
example of each, which CSV columns were not numbers and the ``columns`` option that leaves them out, and exits
with status 1 (as ``streammas send`` does for such a file).

>>> import tempfile, pathlib
>>> from connectors.csv_source import CsvSource
>>> with tempfile.TemporaryDirectory() as d:
...     _ = pathlib.Path(d, "data.csv").write_text("ts,a,b\\n2024-01-01,1,2\\n2024-01-02,3,4\\n")
...     with CsvSource(f"{d}/data.csv") as source:
...         _ = list(source)
...         print(nothing_valid(source, "csv:data.csv").replace(d + "/", ""))
csv:data.csv yielded no valid sample: 2 turned away, parse 2 (the first: data.csv line 2: column 'ts': \
'2024-01-01' is not a number); the columns that were not numbers: 'ts' (2 rows). Leave them out of the features: \
[source] options = { columns = ["a", "b"] }
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from connectors.base import Source
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.telemetry import Tally

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

#: The stop reason of a finite source that yielded nothing to learn (exit status 1).
NOTHING_VALID = "source yielded no valid sample"


def turned_away(counters: Mapping[str, int]) -> dict[str, int]:
    """A source's rejected samples by reason, from its counters.

    >>> turned_away({"samples": 4, "rejected:parse": 2, "rejected_messages:json": 1, "rejected:label": 0})
    {'parse': 2}
    """
    return {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("rejected:") and v}


def nothing_valid(source: Source, uri: str) -> str:
    """Why ``source`` (named ``uri``) yielded no valid sample: what it turned away, or that it held nothing."""
    rejected = turned_away(getattr(source, "counters", {}) or {})
    if not rejected:
        return f"{uri} yielded no sample: it holds no data (an empty file, or only a header)"
    examples = getattr(source, "reject_examples", None) or {}
    reasons = ", ".join(f"{reason} {count:,}" + (f" (the first: {examples[reason]})" if reason in examples else "")
                        for reason, count in sorted(rejected.items()))
    text = f"{uri} yielded no valid sample: {sum(rejected.values()):,} turned away, {reasons}"
    failed = getattr(source, "failed_columns", None) or {}
    if failed:
        text += "; the columns that were not numbers: " + ", ".join(f"{c!r} ({n:,} rows)" for c, n in failed.items())
    if failed or "columns" in rejected or "parse" in rejected:
        kept = [c for c in getattr(source, "feature_columns", None) or [] if c not in failed] or ["a", "b"]
        text += (". Leave them out of the features: [source] options = { columns = " + json.dumps(kept) + " }"
                 if failed else ". Choose the feature columns: [source] options = { columns = [\"a\", \"b\"] }")
    return text


def source_finished(source: Source, tally: Tally, learner: OnlineMAS | None, position: dict | None,
                    uri: str) -> tuple[str, int, dict | None]:
    """``(stop reason, exit status, position)`` once a finite ``source`` is exhausted, logging the end.

    Nothing to learn from this run's source (no valid sample, and something turned away, or nothing learned at
    all) is an error: :data:`NOTHING_VALID`, status 1, said with :func:`nothing_valid`. The position becomes the
    source's own, past the rows it turned away after its last batch, once a learner exists (without one, a
    restart reads the source from its start again, with the configuration fixed).
    """
    logs.log_event(log, "source_finished", samples=tally.received)
    counters: Mapping[str, Any] = getattr(source, "counters", {}) or {}
    if learner is not None:
        position = getattr(source, "position", None) or position
    if int(counters.get("samples", 0)) == 0 and (learner is None or turned_away(counters)):
        logs.log_event(log, "no_valid_samples", logging.ERROR, msg=nothing_valid(source, uri))
        return NOTHING_VALID, 1, position
    return "source finished", 0, position
