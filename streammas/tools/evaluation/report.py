"""The markdown report of an evaluation: the summary tables (tuning streams, held-out ones, stress ones), whether
streammas helps against plain, the baselines and no-mas, the stress streams' own metrics, skipped updates, the
targets, and per-benchmark details."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streammas.tools.evaluation.stress_metrics import ROWS as STRESS_ROWS
from streammas.tools.evaluation.summary import BAND, MAX_SKIPPED, PRIMARY, REFERENCES

LABELS = {"plain": "plain (no memory)", "buffer": "hard buffer", "no-mas": "no MAS (λ = 0)",
          "mas": "MAS λ 0.01 + replay", "mas-only": "MAS λ 0.01, no replay",
          "streammas": "**streammas**", "streammas-buffer": "streammas (buffer Ω)", "oracle": "oracle boundaries",
          "baseline": "baseline (Adam, replay)", "baseline-bytes": "baseline, streammas's memory bytes",
          "iid": "i.i.d. (bound)"}
GROUPS = (("tuning", "The six tuning streams"), ("held-out", "Held-out streams"), ("stress", "Stress streams"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _cell(row: Mapping[str, Any], kind: str) -> str:
    p, diverged, seeds = row["primary"], row.get("diverged", 0), len(row.get("seeds", ()))
    if not math.isfinite(p["mean"]):
        return "diverged"
    cell = f"{p['mean']:.4f} ± {p['std']:.4f}" if kind == "reconstruction" else \
        f"{100 * p['mean']:.1f} ± {100 * p['std']:.1f}"
    return cell + (f" ({diverged} of {seeds} seeds diverged)" if diverged else "")


def _group(summary: Mapping[str, Any], bench: str) -> str:
    rows = next(iter(summary[bench].values()))
    return next(iter(rows.values())).get("group", "tuning")


def _groups(summary: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(title, benchmarks) per group present, in the order of :data:`GROUPS`."""
    out = [(title, [b for b in summary if _group(summary, b) == key]) for key, title in GROUPS]
    return [(title, benches) for title, benches in out if benches]


def _gain(row: Mapping[str, Any], ref: str) -> str:
    if ref not in row.get("relative", {}):
        return ""
    gain = row["relative"][ref]
    if math.isinf(gain):
        return f"{row['verdict'][ref]} ({'diverged' if gain < 0 else 'the other diverged'})"
    return f"{row['verdict'][ref]} ({_fmt(100 * gain, 1)}%)" if math.isfinite(gain) else "n/a"


def _stress_cell(row: Mapping[str, Any], key: str, how: str) -> str:
    value = row.get(key)
    if not value or not isinstance(value.get("mean"), (int, float)) or not math.isfinite(value["mean"]):
        return "n/a"
    mean, std = value["mean"], value["std"]
    if how == "error":
        return f"{mean:.4f} ± {std:.4f}"
    if how == "auc":
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    if how == "kib":
        return f"{mean / 1024:.0f}"
    missed = row.get("changes_not_reached", 0)
    return f"{mean:.0f} ± {std:.0f}" + (f" ({missed} not reached)" if missed else "")


def _stress_lines(summary: Mapping[str, Any], methods: list[str]) -> list[str]:
    """The stress streams' metrics (:mod:`~streammas.tools.evaluation.stress_metrics`), one row per metric."""
    benches = [b for b in summary if _group(summary, b) == "stress"]
    if not benches:
        return []
    lines = ["## Stress streams: memory against memory", "",
             "Errors on every regime's held-out rows at the end (standardised, lower is better); the rarest quarter: "
             "the regimes with the fewest samples, then the longest unseen. Samples to reach plain: after each "
             "permanent change, until the error on the new regime is within 2% of plain's halfway through its "
             "stretch (plain: about half the stretch; a change never reached counts the whole stretch). ROC AUC: "
             "the prequential per-sample losses of the anomalies (planted; or the first 100 samples of the faulty "
             "period) against the other samples of the returns (the normal samples just before the fault).", "",
             "| stream | metric | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for bench in benches:
        for length, rows in summary[bench].items():
            name = bench if length == "long" else f"{bench} ({length})"
            for key, what, how in STRESS_ROWS:
                if any(key in rows[m] for m in methods if m in rows):
                    cells = [_stress_cell(rows[m], key, how) if m in rows else "" for m in methods]
                    lines.append(f"| {name} | {what} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(results: Mapping[str, Any], command: str | None = None) -> str:
    """The whole report as markdown."""
    summary = results["summary"]
    methods = [m["name"] for m in results["methods"]]
    cfg = results["config"]
    lines = ["# streammas evaluate", ""]
    if command:
        lines += [f"Reproduce with `{command}`.", ""]
    lines += [f"Seeds {cfg['seeds']}, batch size {cfg['batch_size']}; mean ± std over seeds. Accuracy and ROC AUC "
              "in %; reconstruction error as the standardised reconstruction error: the mean squared error in units "
              "of each feature's standard deviation over the stream, the same unit for every method (lower is "
              "better; about 1 for a model that predicts the mean). No method is told where a regime ends, except "
              "the oracle's consolidations.", ""]
    for title, benches in _groups(summary):
        header = "| benchmark | length | metric | " + " | ".join(LABELS.get(m, m) for m in methods)
        lines += [f"### {title}", "", header + " | streammas: gap closed |", "|" + "---|" * (len(methods) + 4)]
        for bench in benches:
            for length, rows in summary[bench].items():
                kind = next(iter(rows.values()))["kind"]
                cells = [_cell(rows[m], kind) if m in rows else "" for m in methods]
                gap = rows.get("streammas", {}).get("gap_closed")
                lines.append(f"| {bench} | {length} | {PRIMARY[kind][0]} | " + " | ".join(cells)
                             + f" | {_fmt(gap, 2)} |")
        lines.append("")
    refs = [r for r in REFERENCES if any(r in rows for by in summary.values() for rows in by.values())]
    if refs and any("streammas" in rows for by in summary.values() for rows in by.values()):
        lines += ["## Does streammas help?", "",
                  f"Relative difference of the primary metric in streammas's favour; within ±{BAND:.0%} neutral.", "",
                  "| benchmark | length | " + " | ".join(f"vs {LABELS.get(r, r)}" for r in refs) + " |",
                  "|---|---|" + "---|" * len(refs)]
        for bench, by_length in summary.items():
            for length, rows in by_length.items():
                if "streammas" in rows:
                    lines.append(f"| {bench} | {length} | "
                                 + " | ".join(_gain(rows["streammas"], r) for r in refs) + " |")
        lines.append("")
    lines += _stress_lines(summary, methods)
    lines += [f"## Skipped updates (% of updates; target <= {100 * MAX_SKIPPED:g}%)", "",
              "| benchmark | length | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for bench, by_length in summary.items():
        for length, rows in by_length.items():
            cells = [_fmt(100 * rows[m].get("skipped_share", 0.0), 2) if m in rows else "" for m in methods]
            lines.append(f"| {bench} | {length} | " + " | ".join(cells) + " |")
    met = sum(t["met"] for t in results["targets"])
    lines += ["", "## Targets (streammas defaults)", "", f"{met} of {len(results['targets'])} met.", "",
              "| benchmark | length | target | value | met |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['benchmark']} | {t['length']} | {t['target']} | {_fmt(t['value'])} | "
                     f"{'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Details", ""]
    for bench, by_length in summary.items():
        for length, rows in by_length.items():
            kind = next(iter(rows.values()))["kind"]
            lines += [f"### {bench}, {length}", "",
                      "| method | final per regime | forgetting per regime (best - final) | plateaus | peaks | "
                      "consolidations | mean distance of a consolidation to a boundary (samples) |",
                      "|---|---|---|---|---|---|---|"]
            scale = 1 if kind == "reconstruction" else 100
            digits = 4 if kind == "reconstruction" else 1
            for m in methods:
                if m not in rows:
                    continue
                r = rows[m]
                final = " / ".join(_fmt(scale * v, digits) for v in r["final_per_regime"])
                forget = " / ".join(_fmt(scale * v, digits) for v in r["forgetting_per_regime"])
                lines.append(f"| {LABELS.get(m, m)} | {final} | {forget} | {r['plateaus']:.1f} | {r['peaks']:.1f} | "
                             f"{r['consolidations']:.1f} | {_fmt(r['consolidation_mean_abs_distance'], 0)} |")
            if kind == "anomaly":
                segments = len(next(iter(rows.values()))["segment_auc"])  # any method: --methods may omit plain
                lines += ["", "Prequential ROC AUC per segment (the last one is the returning regime):", "",
                          "| method | " + " | ".join(f"segment {i}" for i in range(segments)) + " |",
                          "|---|" + "---|" * segments]
                for m in methods:
                    if m in rows:
                        lines.append(f"| {LABELS.get(m, m)} | "
                                     + " | ".join(_fmt(100 * v, 1) for v in rows[m]["segment_auc"]) + " |")
            lines.append("")
    env = results.get("environment", {})
    lines.append(f"Python {env.get('python')}, torch {env.get('torch')}.")
    return "\n".join(lines) + "\n"
