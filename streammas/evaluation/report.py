"""The markdown report of an evaluation: the summary table, the targets, and per-benchmark details."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streammas.evaluation.harness import PRIMARY

LABELS = {"plain": "plain SGD", "buffer": "hard buffer", "streammas": "**streammas**",
          "streammas-buffer": "streammas (buffer Ω)", "oracle": "oracle boundaries", "iid": "i.i.d. (bound)"}


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _cell(row: Mapping[str, Any], kind: str) -> str:
    p = row["primary"]
    if kind == "reconstruction":
        return f"{p['mean']:.4f} ± {p['std']:.4f}"
    return f"{100 * p['mean']:.1f} ± {100 * p['std']:.1f}"


def render_markdown(results: Mapping[str, Any], command: str | None = None) -> str:
    """The whole report as markdown."""
    summary = results["summary"]
    methods = [m["name"] for m in results["methods"]]
    cfg = results["config"]
    lines = ["# streammas evaluate", ""]
    if command:
        lines += [f"Reproduce with `{command}`.", ""]
    lines += [f"Seeds {cfg['seeds']}, batch size {cfg['batch_size']}; mean ± std over seeds. Accuracy and ROC AUC "
              "in %, reconstruction error as mean squared error (lower is better). No method is told where a "
              "regime ends, except the oracle's consolidations.", ""]
    header = "| benchmark | length | metric | " + " | ".join(LABELS.get(m, m) for m in methods)
    header += " | streammas: gap closed |"
    lines += [header, "|" + "---|" * (len(methods) + 4)]
    for bench, by_length in summary.items():
        for length, rows in by_length.items():
            kind = next(iter(rows.values()))["kind"]
            cells = [_cell(rows[m], kind) if m in rows else "" for m in methods]
            gap = rows.get("streammas", {}).get("gap_closed")
            lines.append(f"| {bench} | {length} | {PRIMARY[kind][0]} | " + " | ".join(cells) + f" | {_fmt(gap, 2)} |")
    lines += ["", "## Targets (streammas defaults)", "", "| benchmark | length | target | value | met |",
              "|---|---|---|---|---|"]
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
