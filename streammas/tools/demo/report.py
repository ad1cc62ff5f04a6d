"""What the demo measured (:class:`DemoResult`), and the report it prints at the end (:func:`render_report`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The regimes' names in the report: A, B, C ... in the order of the stream's regimes.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class DemoResult:
    """What the demo measured (also returned to callers and tests).

    :func:`run_demo` returns it and :func:`render_report` prints it; ``mean_service`` and ``mean_plain`` are
    the mean over regimes of ``service_error`` and ``plain_error``.

    Parameters
    ----------
    samples : int
        Samples the service learned.
    seconds : float
        Wall-clock seconds from the first batch sent to the service's stop.
    counters : dict of str to int
        The learner's counters (``plateaus``, ``peaks`` ...).
    consolidations : int
        How many times the learner consolidated its memory.
    events : list of dict
        The learner's ``plateau``, ``peak`` and ``consolidation`` events, each with its ``samples_seen``.
    regimes : list of str
        The regimes' names, in the order of their letters (A, B, C ...).
    segments : list of (int, int, int)
        The stream's segments as ``(first sample, end sample, regime index)``.
    settings : dict
        The ``[learner]`` settings the service ran with.
    service_error : list of float
        Each regime's reconstruction error on its held-out samples, by the service's learner at the end.
    plain_error : list of float
        The same for a plain online learner with no memory (``reg_lambda=0, hard_buffer=0, replay=0``) trained on
        the same batches.
    state_dir : str
        The state directory kept (``""``: a temporary one, deleted).
    memory : str, default ""
        What the learner's replay memory held at the end (:meth:`~streammas.learner.replay.ReplayMemory.describe`).

    Examples
    --------
    >>> result = DemoResult(
    ...     samples=300, seconds=1.5, counters={"plateaus": 1, "peaks": 0}, consolidations=1,
    ...     events=[{"kind": "consolidation", "samples_seen": 120}], regimes=["digits 0-4", "digits 5-9"],
    ...     segments=[(0, 150, 0), (150, 300, 1)], settings={"lr": 0.01}, service_error=[0.02, 0.03],
    ...     plain_error=[0.05, 0.03], state_dir="")
    >>> result.mean_service, result.mean_plain
    (0.025, 0.04)
    >>> print(render_report(result))
    <BLANKLINE>
    streammas demo: report
    ...
      consolidation  at sample     120: segment 1 (regime A), 120 samples after it began
    ...
    streammas remembers better: 38% lower mean error than the same learner with no memory
    <BLANKLINE>
    """

    samples: int
    seconds: float
    counters: dict[str, int]
    consolidations: int
    events: list[dict[str, Any]]
    regimes: list[str]
    segments: list[tuple[int, int, int]]
    settings: dict[str, Any]
    service_error: list[float]
    plain_error: list[float]
    state_dir: str
    memory: str = ""

    @property
    def mean_service(self) -> float:
        return float(np.mean(self.service_error))

    @property
    def mean_plain(self) -> float:
        return float(np.mean(self.plain_error))


def segment_of(samples: int, segments: list[tuple[int, int, int]]) -> int:
    """The index of the segment a sample count falls in (the last one past the end).

    >>> segments = [(0, 100, 0), (100, 200, 1)]
    >>> segment_of(0, segments), segment_of(150, segments), segment_of(250, segments)
    (0, 1, 1)
    """
    for i, (start, end, _) in enumerate(segments):
        if start <= samples < end:
            return i
    return len(segments) - 1


def _where(samples: int, segments: list[tuple[int, int, int]]) -> str:
    """Which segment a sample count falls in, and how far into it."""
    i = segment_of(samples, segments)
    start, _, regime = segments[i]
    return f"segment {i + 1} (regime {LETTERS[regime]}), {samples - start:,} samples after it began"


def _settings_text(settings: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for key, value in settings.items():
        if key in ("objective", "on_bad_input"):
            continue
        if isinstance(value, dict):
            parts.append(_settings_text(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={value}")
    return ", ".join(p for p in parts if p)


def _learner_text(settings: dict[str, Any]) -> str:
    from streammas.learner import learner_defaults

    defaults = learner_defaults()
    shown = {k: defaults[k] for k in ("lr", "reg_lambda", "hard_buffer", "consolidate_at")}
    given = _settings_text(settings)
    return (f"{given}; the learner's defaults otherwise" if given else
            "the learner's defaults, untuned: " + _settings_text(shown) + ", ...")


#: The learner with no memory forgot the first regime when its error there is above this many times streammas's.
FORGOT = 1.25


def _verdict(result: DemoResult, change: float) -> str:
    """Which learner remembers better; forgetting is called mild only when the learner with no memory kept the
    regime shown first (its error there within :data:`FORGOT` times streammas's).

    >>> r = DemoResult(0, 1.0, {}, 0, [], ["a", "b"], [(0, 10, 0), (10, 20, 1)], {}, [0.01, 0.05], [0.05, 0.01], "")
    >>> print(_verdict(r, 0.0))
    the learner with no memory did as well or better on the mean (0%), but forgot regime A, ...: its error ... 5.0x ...
    """
    if change > 0.01:
        return f"streammas remembers better: {change:.0%} lower mean error than the same learner with no memory"
    first, better = result.segments[0][2], max(0.0, -change)
    ours, plain = result.service_error[first], result.plain_error[first]
    if plain > FORGOT * ours:
        return (f"the learner with no memory did as well or better on the mean ({better:.0%}), but forgot regime "
                f"{LETTERS[first]}, shown first: its error there is {plain / ours:.1f}x streammas's")
    return (f"the learner with no memory did as well or better here ({better:.0%}); on this stream, forgetting was "
            f"mild (regime {LETTERS[first]}, shown first, is reconstructed about as well without memory)")


def render_report(result: DemoResult) -> str:
    """The short report printed at the end of the demo."""
    order = " ".join(LETTERS[r] for _, _, r in result.segments)
    lines = ["", "streammas demo: report", "=" * 22,
             f"stream       {result.samples:,} samples in regimes {order} (no boundaries given), "
             f"learned through ZeroMQ in {result.seconds:.1f} s ({result.samples / max(result.seconds, 1e-9):,.0f}"
             " samples/s)",
             f"learner      {_learner_text(result.settings)}",
             f"memory       {result.memory or 'none'}; the regulariser "
             f"{'on' if result.settings.get('reg_lambda') else 'off'}, the importance measured for inspection",
             f"detector     {result.counters.get('plateaus', 0)} plateaus, {result.counters.get('peaks', 0)} peaks, "
             f"{result.consolidations} consolidations"]
    for e in result.events:
        lines.append(f"  {e['kind']:<14} at sample {e['samples_seen']:>7,}: "
                     f"{_where(int(e['samples_seen']), result.segments)}")
    lines += ["", "reconstruction error on each regime's held-out samples at the end (lower is better)",
              f"  {'regime':<34} {'streammas':>10} {'no memory':>10}"]
    for i, (name, ours, plain) in enumerate(zip(result.regimes, result.service_error, result.plain_error)):
        lines.append(f"  {LETTERS[i] + ': ' + name:<34} {ours:>10.4f} {plain:>10.4f}")
    lines.append(f"  {'mean':<34} {result.mean_service:>10.4f} {result.mean_plain:>10.4f}")
    change = (result.mean_plain - result.mean_service) / result.mean_plain if result.mean_plain else 0.0
    lines += ["", _verdict(result, change)]
    last = result.segments[-1][2]
    ours, plain = result.service_error[last], result.plain_error[last]
    if change > 0.01 and ours > plain * 1.01:
        lines.append(f"the price: regime {LETTERS[last]}, shown last, is reconstructed {ours / plain - 1:.0%} worse "
                     "than by the learner with no memory (stability against plasticity)")
    if result.state_dir:
        lines.append(f"state kept in {result.state_dir}: try `streammas inspect {result.state_dir}`")
    return "\n".join(lines) + "\n"
