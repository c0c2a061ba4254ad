"""PNG figures of the robustness tests (matplotlib, Agg backend: no display needed).

Each figure answers one question at a glance, in the reader's terms:

* :func:`plot_sweep` — one panel per perturbation: the model's confidence and the explanation's
  similarity to the unperturbed one against severity (tick labels in physical units), the clinically
  plausible range shaded, the 0.5 break line, the severities where the prediction flips and the
  explanation decorrelates marked, and the panel title in red when either happens inside the
  plausible range.
* :func:`plot_sanity` — similarity of each method's map to the original as the network is randomised
  from the output side, with the pass line.
* :func:`plot_faithfulness` — deletion and insertion curves against random orderings, AUCs in the legend.
* :func:`plot_bench` — each method's ground-truth scores with bootstrap intervals and chance levels.
"""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .faithfulness import FaithfulnessResult  # noqa: E402
from .sanity import SanityResult  # noqa: E402
from .sweep import SPEARMAN_BREAK, RobustnessSweep  # noqa: E402
from .verdicts import POINTING_TARGET  # noqa: E402

__all__ = ["plot_sweep", "plot_sanity", "plot_faithfulness", "plot_bench"]

_RED, _GREEN, _ORANGE, _BLUE, _GREY = "#c0392b", "#1e8449", "#d35400", "#1f5fbf", "#7f7f7f"


def plot_sweep(sweep: RobustnessSweep, path: str | os.PathLike, title: str = "") -> None:
    """One panel per perturbation: confidence and explanation similarity against severity."""
    sweeps = list(sweep.sweeps.values())
    columns = min(4, len(sweeps))
    rows = (len(sweeps) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.7 * rows + 1.3), squeeze=False)
    segmentation = sweep.baseline["task"] == "segmentation"
    for axis, one in zip(axes.flat, sweeps):
        _sweep_panel(axis, one, segmentation)
    for axis in list(axes.flat)[len(sweeps):]:
        axis.set_visible(False)
    legend: dict = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), frameon=False,
                  fontsize=9)
    baseline = sweep.baseline
    predicted = (f"predicted '{baseline['predicted_label']}' ({baseline['confidence']:.0%})" if not segmentation
                 else f"segmenting '{baseline['target']['class_name']}'")
    warnings = sweep.warnings()
    verdict = (f"{len(warnings)} of {len(sweeps)} perturbations break the model or its explanation within the "
               f"clinically plausible range (red titles)" if warnings
               else "Prediction and explanation stable within the clinically plausible range of every perturbation")
    figure.suptitle(f"{title or 'Robustness sweep'} — {baseline['method_name']}, unperturbed: {predicted}\n{verdict}",
                    fontsize=11, color=_RED if warnings else "black")
    figure.tight_layout(rect=(0, 0.07, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _sweep_panel(axis, one, segmentation: bool) -> None:
    summary = one.summary
    severities = [row["severity"] for row in one.rows]
    plausible = summary["plausible_max_severity"]
    if plausible > 0:
        axis.axvspan(-0.25, plausible + 0.25, color=_GREEN, alpha=0.10, lw=0, label="clinically plausible range")
    axis.axhline(SPEARMAN_BREAK, color=_GREY, ls=":", lw=1, label=f"break line ({SPEARMAN_BREAK:g})")
    confidence_label = "model confidence (explained class)" if segmentation else "model confidence (unperturbed class)"
    axis.plot(severities, [r["confidence"] for r in one.rows], "o-", color="black", lw=2, label=confidence_label)
    if segmentation:
        axis.plot(severities, [r["dice"] for r in one.rows], "^-", color="#7d3c98", lw=1.5,
                  label="segmentation Dice vs unperturbed")
    axis.plot(severities, [r["spearman"] for r in one.rows], "s-", color=_BLUE, lw=2,
              label="explanation similarity (Spearman)")
    axis.plot(severities, [r["topk_iou"] for r in one.rows], "--", color=_BLUE, lw=1, alpha=0.6,
              label="overlap of top-10 % voxels (IoU)")
    flip, decorrelated = summary["flip_severity"], summary["decorrelation_severity"]
    if flip is not None:
        axis.axvline(flip, color=_RED, lw=2, label="prediction flips")
        axis.text(flip, 1.02, " flips", color=_RED, fontsize=8, va="bottom", ha="left")
    if decorrelated is not None:
        axis.axvline(decorrelated, color=_ORANGE, lw=2, ls="--", label="explanation decorrelates")
        axis.text(decorrelated, 0.02, " decorrelates", color=_ORANGE, fontsize=8, va="bottom", ha="left",
                  rotation=90)
    perturbation = one.perturbation
    axis.set_xticks(severities)
    axis.set_xticklabels([f"{s:g}\n{perturbation.format_value(s)}" for s in severities], fontsize=8)
    axis.set_xlim(-0.25, max(severities) + 0.25)
    axis.set_ylim(-0.05, 1.1)
    axis.set_xlabel(f"severity / {perturbation.parameter} ({perturbation.unit})", fontsize=8)
    axis.grid(alpha=0.25)
    broken = not summary["trustworthy_in_plausible_range"]
    status = "breaks in plausible range" if broken else "stable in plausible range"
    axis.set_title(f"{perturbation.title}\n{status}", fontsize=10, color=_RED if broken else _GREEN)


def plot_sanity(results: Mapping[str, SanityResult], path: str | os.PathLike, title: str = "") -> None:
    """Spearman (solid) and SSIM (dotted) of each method's map to the original, per randomisation step."""
    first = next(iter(results.values()))
    labels = [step["randomised"] for step in first.steps]
    figure, axis = plt.subplots(figsize=(max(6.5, 0.9 * len(labels) + 3), 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, result in zip(colours, results.values()):
        steps = range(len(result.steps))
        verdict = "PASS" if result.passed else "FAIL"
        axis.plot(steps, [s["spearman"] for s in result.steps], "o-", color=colour, lw=2,
                  label=f"{result.method_name}: {verdict} (final Spearman {result.final_spearman:.2f})")
        axis.plot(steps, [s["ssim"] for s in result.steps], ":", color=colour, lw=1.2)
    axis.axhline(first.threshold, color=_RED, ls="--", lw=1, label=f"pass line: final Spearman < {first.threshold:g}")
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(["original"] + [f"+ {label}" for label in labels[1:]], rotation=35, ha="right", fontsize=8)
    axis.set_xlabel("layers re-initialised, cumulatively from the output side →")
    axis.set_ylabel("similarity to the original map\n(Spearman of |map| solid, SSIM dotted)")
    axis.set_ylim(-1.05, 1.05)
    axis.grid(alpha=0.25)
    axis.legend(fontsize=8, loc="lower left")
    failed = [r.method_name for r in results.values() if not r.passed]
    headline = (f"FAILED: {', '.join(failed)} — the map does not depend on the model" if failed
                else "All methods pass: their maps change when the model's weights are destroyed")
    axis.set_title(f"{title or 'Model-parameter randomisation (Adebayo et al. 2018)'}\n{headline}", fontsize=10,
                   color=_RED if failed else _GREEN)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_faithfulness(result: FaithfulnessResult, path: str | os.PathLike, title: str = "") -> None:
    """Deletion and insertion curves of the explanation and of random orderings."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    fraction = [100 * f for f in result.fractions]
    panels = (
        (axes[0], "Deletion: most relevant voxels blurred first", result.deletion, result.random_deletion,
         result.deletion_auc, result.random_deletion_auc, result.deletion_beats_random, "lower is better"),
        (axes[1], "Insertion: most relevant voxels restored first", result.insertion, result.random_insertion,
         result.insertion_auc, result.random_insertion_auc, result.insertion_beats_random, "higher is better"),
    )
    for axis, name, curve, random, area, random_area, ok, better in panels:
        axis.plot(fraction, curve, "-", color=_BLUE, lw=2, label=f"{result.method_name} order (AUC {area:.3f})")
        axis.plot(fraction, random, "--", color=_GREY, lw=1.5,
                  label=f"random order, mean of {result.settings['n_random']} (AUC {random_area:.3f})")
        axis.fill_between(fraction, curve, random, color=_GREEN if ok else _RED, alpha=0.12)
        axis.set_xlabel("% of the anatomy's voxels changed (model grid)")
        axis.set_ylabel("probability of the explained target")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.25)
        axis.legend(fontsize=8, loc="best")
        axis.set_title(f"{name}\n{'beats' if ok else 'does NOT beat'} random ({better})", fontsize=10,
                       color=_GREEN if ok else _RED)
    figure.suptitle(f"{title or 'Faithfulness (Petsiuk et al. 2018)'} — target: {result.target}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bench(summary: Mapping[str, Mapping], metrics, path: str | os.PathLike, title: str = "") -> None:
    """One panel per metric: each method's mean with its 95 % bootstrap interval; chance levels dashed
    (the lesion's share of the body for mass in lesion and AUPRC), and the pointing game's target."""
    shown = [(c, h, better) for c, h, better in metrics
             if better is not None and c != "runtime_s" and any(c in s for s in summary.values())]
    methods = list(summary)
    columns = min(4, len(shown))
    rows = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.3 * rows + 0.9), squeeze=False)
    share = [summary[m]["lesion_share"][0] for m in methods if "lesion_share" in summary[m]]
    for axis, (column, heading, better) in zip(axes.ravel(), shown):
        means = [summary[m].get(column, (float("nan"),) * 3) for m in methods]
        heights = [v[0] for v in means]
        errors = [[max(0.0, v[0] - v[1]) for v in means], [max(0.0, v[2] - v[0]) for v in means]]
        axis.bar(range(len(methods)), heights, yerr=errors, capsize=4, color=_BLUE, alpha=0.85)
        if column in ("mass_in_lesion", "auprc") and share:
            axis.axhline(max(share), color=_GREY, linestyle="--", linewidth=1, label="lesion share (chance)")
            axis.legend(fontsize=7, loc="upper right")
        if column == "pointing_hit":
            axis.axhline(POINTING_TARGET, color=_RED, linestyle="--", linewidth=1, label=f"target ({POINTING_TARGET:.2f})")
            axis.legend(fontsize=7, loc="upper right")
        axis.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        axis.set_title(f"{heading} ({'higher' if better else 'lower'} is better)", fontsize=9)
        axis.set_ylim(0, max(1.0, max((v[2] for v in means if v[2] == v[2]), default=1.0) * 1.1))
    for axis in axes.ravel()[len(shown):]:
        axis.set_visible(False)
    figure.suptitle(title or "Explanation methods against the ground-truth lesion (95 % bootstrap CI)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
