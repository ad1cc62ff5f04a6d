"""``streammas inspect STATE_DIR --plot out.png``: a state directory's history and importance, drawn.

A checkpoint keeps no full loss curve (the learner does not store one: it would grow for weeks), so the
figure draws what the checkpoint holds:

- the loss at each of the plateau detector's events (plateaus, peaks) against the samples seen, with every
  consolidation marked by a vertical line;
- the latest batch losses, the detector's sliding window, against its steps;
- the consolidated importance (Omega) of each parameter: the mean as a bar, the largest value as a tick.

matplotlib is an optional dependency (``pip install 'streammas[plot]'``); without it :func:`plot_summary`
raises :class:`PlotUnavailable`, which ``streammas inspect`` turns into a message and exit status 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

#: What to install when matplotlib is missing.
INSTALL_HINT = "pip install 'streammas[plot]'"

#: Under the title: why there is no whole loss curve.
NOTE = "(a checkpoint keeps the loss at the detector's events and its latest window, not the whole curve)"

#: How each of the detector's events is drawn: (marker, colour, legend label).
EVENT_STYLE = {"plateau": ("v", "tab:green", "plateau"), "peak": ("^", "tab:red", "peak")}


class PlotUnavailable(ImportError):
    """matplotlib, which ``--plot`` needs, cannot be imported; the message says what to install.

    Examples
    --------
    >>> str(PlotUnavailable())
    "--plot needs matplotlib: pip install 'streammas[plot]'"
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(f"--plot needs matplotlib: {INSTALL_HINT}" + (f" ({reason})" if reason else ""))


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailable(str(e) if e.name != "matplotlib" else "") from None
    return Figure


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _draw_events(ax: Any, events: Sequence[Mapping[str, Any]], samples_seen: int) -> None:
    for kind, (marker, colour, label) in EVENT_STYLE.items():
        points = [(e["samples_seen"], e["value"]) for e in events
                  if e.get("kind") == kind and isinstance(e.get("value"), (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=marker, color=colour, label=label, zorder=3)
    consolidations = [e.get("samples_seen") for e in events if e.get("kind") == "consolidation"]
    for k, x in enumerate(consolidations):
        ax.axvline(x, color="tab:purple", linestyle="--", linewidth=1, label="consolidation" if k == 0 else None)
    ax.set_xlim(0, max(samples_seen, 1))
    ax.set_xlabel("samples seen")
    ax.set_ylabel("batch loss at the event")
    ax.set_title(f"plateau detector events, {_count(len(consolidations), 'consolidation')}")
    if events:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no plateau, peak or consolidation yet", ha="center", va="center",
                transform=ax.transAxes)


def _draw_window(ax: Any, window: Mapping[str, Any]) -> None:
    values = _numbers(window.get("values"))
    last = int(window.get("steps") or len(values))
    ax.plot(range(last - len(values) + 1, last + 1), values, marker=".", color="tab:blue")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("detector step (one per batch)")
    ax.set_ylabel("batch loss")
    ax.set_title(f"latest {len(values)} batch losses (the detector's window)")


def _draw_importance(ax: Any, importance: Mapping[str, Mapping[str, Any]], status: str) -> None:
    rows = [(name, s["mean"], s["max"]) for name, s in importance.items() if s.get("numel")]
    if not rows:
        ax.text(0.5, 0.5, status, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    names, means, highs = zip(*rows)
    ys = range(len(rows))
    ax.barh(ys, means, color="tab:orange", label="mean")
    ax.scatter(highs, ys, marker="|", s=200, color="black", label="max", zorder=3)
    ax.set_yticks(list(ys), labels=names, fontsize="small")
    ax.invert_yaxis()  # the model's first layer on top
    if min(means) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("consolidated importance (Omega)")
    ax.set_title("importance per parameter")
    ax.legend(loc="lower right", fontsize="small")


def plot_summary(summary: Mapping[str, Any], path: str | os.PathLike, *, name: str | None = None) -> None:
    """Draw a :func:`streammas.tools.inspect.summarize` result to ``path`` (the format from its extension: ``.png``,
    ``.svg``, ``.pdf``), titled with ``name`` (the state directory) and the counts; raises
    :class:`PlotUnavailable` without matplotlib."""
    figure_class = _figure_class()
    importance = summary.get("importance") or {}
    window = summary.get("loss_window") or {}
    has_window = bool(_numbers(window.get("values")))
    panels = 2 + has_window
    heights = [3.0] + [2.2] * has_window + [max(2.0, 0.28 * len(importance) + 1.0)]
    fig = figure_class(figsize=(10, sum(heights) + 0.9), layout="constrained")
    axes = fig.subplots(panels, 1, height_ratios=heights)
    _draw_events(axes[0], summary.get("plateau_history") or [], int(summary.get("samples_seen") or 0))
    if has_window:
        _draw_window(axes[1], window)
    _draw_importance(axes[-1], importance, summary.get("importance_status") or "no consolidated importance yet")
    consolidations = _count(summary.get("consolidations", 0), "consolidation")
    title = f"{name + ': ' if name else ''}{summary.get('samples_seen', 0):,} samples seen, {consolidations}"
    fig.suptitle(f"{title}\n{NOTE}", fontsize="medium")
    fig.savefig(os.fspath(path), dpi=100)
