"""PNG figures of an evaluation. matplotlib is imported only here, and only when a figure is drawn."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"plain": "#7f7f7f", "buffer": "#bcbd22", "no-mas": "#e377c2", "streammas": "#d62728",
          "streammas-buffer": "#ff7f0e", "oracle": "#1f77b4", "baseline": "#9467bd", "iid": "#2ca02c",
          "baseline-bytes": "#8c564b"}
YLABEL = {"classification": "test accuracy", "reconstruction": "test standardised reconstruction error",
          "anomaly": "test ROC AUC"}


def _mean_curves(runs: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation times and the per-regime matrix, averaged over seeds (runs share their evaluation times)."""
    n = min(len(r["eval_samples"]) for r in runs)
    samples = np.asarray(runs[0]["eval_samples"][:n])
    matrix = np.nanmean(np.asarray([r["matrix"][:n] for r in runs], dtype=float), axis=0)
    return samples, matrix


def plot_results(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """One figure per benchmark and length: the mean over regimes over time for every method (left), and each
    regime's curve for plain SGD and streammas (right). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped: dict[tuple[str, str], dict[str, list]] = {}
    for run in results["runs"]:
        grouped.setdefault((run["benchmark"], run["length"]), {}).setdefault(run["method"], []).append(run)
    written = []
    for (bench, length), by_method in grouped.items():
        first = next(iter(by_method.values()))[0]
        kind = first["kind"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for method, runs in by_method.items():
            samples, matrix = _mean_curves(runs)
            left.plot(samples, matrix.mean(axis=1), label=method, color=COLORS.get(method),
                      lw=2.2 if method == "streammas" else 1.3)
        seq_method = "streammas" if "streammas" in by_method else None
        if seq_method:
            for s in by_method[seq_method][0]["events"].get("consolidation_samples", []):
                left.axvline(s, color=COLORS["streammas"], lw=0.8, ls=":", alpha=0.8)
        for ax in (left, right):
            for b in first["boundaries"]:
                ax.axvline(b, color="black", lw=0.6, ls="--", alpha=0.4)
            ax.set_xlabel("samples seen")
            ax.set_ylabel(YLABEL[kind])
        left.set_title(f"{bench} ({length}): mean over regimes")
        left.legend(fontsize=8)
        cmap = plt.get_cmap("tab10")
        for method, style in (("plain", "--"), ("streammas", "-")):
            if method not in by_method:
                continue
            samples, matrix = _mean_curves(by_method[method])
            for r in range(matrix.shape[1]):
                labelled = method == "streammas" and matrix.shape[1] <= 10  # a hundred regimes: no legend
                right.plot(samples, matrix[:, r], ls=style, color=cmap(r % 10), lw=1.4,
                           label=f"regime {r}" if labelled else None)
        right.set_title("per regime: streammas (solid), plain SGD (dashed)")
        if right.get_legend_handles_labels()[1]:
            right.legend(fontsize=8)
        fig.text(0.01, 0.01, "dashed black: true boundaries (never shown to the learners); "
                 "dotted red: streammas consolidations (seed 0)", fontsize=7)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out_dir / f"{bench}-{length}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
