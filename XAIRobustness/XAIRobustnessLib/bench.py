"""``slicer-xai bench``: how good each explanation method is on cases whose lesion is known.

For every case with a lesion and every method, the map is scored against the ground-truth mask
(:mod:`.localisation`: pointing game, attribution mass in the lesion, AUPRC, top-k IoU), for its
faithfulness (deletion / insertion AUC against random orderings, Petsiuk et al., BMVC 2018), for its
stability under mild perturbations (mean Spearman at severity 1 of the modality's perturbations), and
for its runtime; the model-randomisation check (Adebayo et al., NeurIPS 2018) runs on the first few
cases. Per-method means come with 95 % percentile-bootstrap confidence intervals over cases (Efron &
Tibshirani, 1993). The protocol follows the questions of Arun et al. (Radiol. AI 2021) and Saporta et
al. (Nat. Mach. Intell. 2022).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from XAIExplainLib.explainers import EXPLAINERS
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.pipeline import explain_image
from XAIExplainLib.progress import CancelToken, ProgressCallback, Stage
from XAIExplainLib.training.common import bootstrap_interval

from .faithfulness import faithfulness_test
from .localisation import localisation_scores
from .reference import Reference, explain_reference
from .sanity import sanity_check
from .sweep import robustness_sweep
from .verdicts import (MASS_OVER_SHARE_TARGET, POINTING_TARGET, evidence_line, rank_methods,
                       recommended_method)

__all__ = ["BenchCase", "BenchResult", "run_bench", "bootstrap_ci", "METRICS", "write_bench", "bench_json",
           "recommendation_text", "folder_cases", "synthetic_cases"]

_MASK_SUFFIX = "_mask"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

#: Deletion / insertion curves of the bench: coarser than ``slicer-xai faithfulness`` (20 steps, 3 random
#: orders) because they run for every case and method.
FAITHFULNESS_STEPS, FAITHFULNESS_RANDOM = 10, 2

#: Per-case metrics of the table: (column, heading, higher is better).
METRICS = (
    ("pointing_hit", "pointing game", True),
    ("mass_in_lesion", "mass in lesion", True),
    ("lesion_share", "lesion share of body", None),
    ("auprc", "AUPRC", True),
    ("top_k_iou", "top-k IoU", True),
    ("deletion_auc", "deletion AUC", False),
    ("insertion_auc", "insertion AUC", True),
    ("faithful", "beats random (del. & ins.)", True),
    ("stability_spearman", "stability (Spearman, mild)", True),
    ("runtime_s", "runtime (s)", False),
)


@dataclass(frozen=True)
class BenchCase:
    """One case: its name, image and ground-truth lesion mask (same grid)."""

    name: str
    image: sitk.Image
    lesion: sitk.Image


@dataclass
class BenchResult:
    """Per-case rows, per-method sanity verdicts, and the settings that reproduce them."""

    model: str
    rows: list[dict[str, Any]]
    sanity: dict[str, list[dict[str, Any]]]
    settings: dict[str, Any]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def folder_cases(folder: Path) -> list[BenchCase]:
    """Every image of ``folder`` that has its mask beside it as ``<name>_mask.<same extension>``."""
    from XAIExplainLib.imageio import read_image, read_mask

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--cases {folder} is not a folder.")
    cases = []
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in _IMAGE_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or path.name[: -len(suffix)].endswith(_MASK_SUFFIX):
            continue
        stem = path.name[: -len(suffix)]
        mask_path = folder / f"{stem}{_MASK_SUFFIX}{suffix}"
        if mask_path.is_file():
            image = read_image(str(path))
            # The mask may be stored on another grid (a label map of a DICOM series, say): bring it
            # onto the image's, where the engine returns every map.
            mask = sitk.Resample(read_mask(mask_path), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                 sitk.sitkUInt8)
            cases.append(BenchCase(stem, image, mask))
    if not cases:
        raise ValueError(f"No image with a '<name>{_MASK_SUFFIX}' mask beside it in {folder}.")
    return cases


def synthetic_cases(kind: str, n: int, seed: int) -> list[BenchCase]:
    """``n`` freshly generated cases of ``kind`` (``brain-mri`` or ``chest-ct``) from ``seed``."""
    from XAIExplainLib.data import make_case

    cases = []
    for index in range(n):
        image, mask, _ = make_case(kind, seed, index)
        cases.append(BenchCase(f"{kind}-{seed}-{index:03d}", image, mask))
    return cases


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of ``values`` (NaNs dropped); NaNs when empty."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = bootstrap_interval(lambda draw: float(data[draw].mean()), data.size, resamples, seed)
    return float(data.mean()), low, high


def run_bench(
    model: LoadedModel,
    cases: Iterable[BenchCase],
    methods: Sequence[str],
    faithfulness: bool = True,
    stability: bool = True,
    sanity_cases: int = 2,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> BenchResult:
    """Score ``methods`` on ``cases`` (cases without a lesion are skipped: nothing to localise)."""
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(EXPLAINERS)}.")
    cases = [c for c in cases if bool(sitk.GetArrayViewFromImage(c.lesion).any())]
    if not cases:
        raise ValueError("None of the cases has a lesion in its mask: the bench needs ground truth to measure against.")
    # The finding's class is explained on every case, whatever the model predicted — as in the pointing
    # game (Zhang et al. 2016), which asks where the evidence for the ground-truth class lies; a missed
    # lesion then shows as a miss instead of as a map of the evidence for "no lesion".
    finding = model.spec.positive_class
    stage = Stage(progress, cancel)
    rows: list[dict[str, Any]] = []
    sanity: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    total = len(cases) * len(methods)
    for c, case in enumerate(cases):
        for m, method in enumerate(methods):
            step = stage.sub((c * len(methods) + m) / total, (c * len(methods) + m + 1) / total)
            step.report(0.0, f"{case.name}: {method}")
            run_sanity = c < sanity_cases
            # One unperturbed reference serves the faithfulness, stability and randomisation checks.
            reference = (explain_reference(case.image, model, method, seed, target=finding)
                         if faithfulness or stability or run_sanity else None)
            rows.append(_score(model, case, method, finding, faithfulness, stability, seed, reference, cancel))
            step.report(1.0, f"{case.name}: {method} scored")
            if run_sanity:
                check = sanity_check(case.image, model, method, seed=seed, reference=reference, cancel=cancel)
                sanity[method].append({"case": case.name, "passed": check.passed,
                                       "final_spearman": check.final_spearman, "empty_map": check.empty_map})
    stage.report(1.0, "done")
    result = BenchResult(model=model.model_id, rows=rows, sanity=sanity,
                         settings={"methods": list(methods), "faithfulness": faithfulness, "stability": stability,
                                   "sanity_cases": sanity_cases, "seed": seed, "cases": [c.name for c in cases]})
    result.summary = summarise(result, seed)
    return result


def _score(model: LoadedModel, case: BenchCase, method: str, finding: Optional[int], faithfulness: bool,
           stability: bool, seed: int, reference: Optional[Reference], cancel: Optional[CancelToken]) -> dict[str, Any]:
    started = time.perf_counter()
    explained = explain_image(case.image, model, method=method, target=finding, seed=seed, cancel=cancel)
    runtime = time.perf_counter() - started
    row: dict[str, Any] = {"case": case.name, "method": method, "runtime_s": runtime,
                           "predicted": explained.prediction.get("predicted_label")}
    scores = localisation_scores(explained.saliency, case.lesion, case.image)
    row.update({k: (float(v) if not isinstance(v, bool) else int(v)) for k, v in scores.to_dict().items()})
    if faithfulness:
        test = faithfulness_test(case.image, model, method, steps=FAITHFULNESS_STEPS, n_random=FAITHFULNESS_RANDOM,
                                 seed=seed, reference=reference, cancel=cancel)
        row.update(deletion_auc=test.deletion_auc, insertion_auc=test.insertion_auc, faithful=int(test.passed))
    if stability:
        sweep = robustness_sweep(case.image, model, severities=(1,), method=method, seed=seed, cancel=cancel,
                                 reference=reference)
        mild = [r["spearman"] for r in sweep.rows if r["severity"] == 1 and "spearman" in r]
        row["stability_spearman"] = float(np.mean(mild)) if mild else float("nan")
    return row


def summarise(result: BenchResult, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per method: mean and 95 % CI of every metric, and the sanity pass rate."""
    summary: dict[str, dict[str, Any]] = {}
    for method in result.settings["methods"]:
        rows = [r for r in result.rows if r["method"] == method]
        entry: dict[str, Any] = {"n_cases": len(rows)}
        for column, _, _ in METRICS:
            values = [r[column] for r in rows if column in r]
            if values:
                entry[column] = bootstrap_ci(values, seed=seed)
        # A case whose map is empty (the model sees no evidence for the finding there: a missed lesion) has
        # nothing to randomise away; it is counted apart, and the pass rate is over the other cases.
        checks = [c for c in result.sanity.get(method, []) if not c.get("empty_map")]
        entry["sanity_pass_rate"] = (sum(c["passed"] for c in checks) / len(checks)) if checks else None
        entry["sanity_n"] = len(checks)
        entry["sanity_empty"] = len(result.sanity.get(method, [])) - len(checks)
        summary[method] = entry
    return summary


def markdown_table(result: BenchResult) -> str:
    """The per-method table, best method first: mean [95 % CI] of each metric, the sanity pass rate, and
    whether the method meets the bench's targets (:mod:`.verdicts`)."""
    columns = [(c, h) for c, h, _ in METRICS if any(c in s for s in result.summary.values())]
    lines = ["| method | cases | " + " | ".join(h for _, h in columns) + " | randomisation check | meets targets |",
             "|---|---|" + "---|" * len(columns) + "---|---|"]
    for verdict in rank_methods(result.summary):
        entry = result.summary[verdict.method]
        cells = []
        for column, _ in columns:
            mean, low, high = entry.get(column, (float("nan"),) * 3)
            digits = 4 if column == "lesion_share" else 2  # a lesion is a fraction of a percent of the body
            cells.append("–" if not np.isfinite(mean) else f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")
        sanity = _sanity_cell(entry)
        meets = "yes" if verdict.meets_targets else "no: " + "; ".join(verdict.failures)
        lines.append(f"| {EXPLAINERS[verdict.method].title} | "
                     f"{entry['n_cases']} | " + " | ".join(cells) + f" | {sanity} | {meets} |")
    return "\n".join(lines) + "\n"


def _sanity_cell(entry: dict[str, Any]) -> str:
    rate, empty = entry["sanity_pass_rate"], entry.get("sanity_empty", 0)
    empties = f"{empty} empty map{'s' if empty > 1 else ''} not checked" if empty else ""
    if rate is None:
        return f"not checked ({empties})" if empty else "not checked"
    return f"{'passes' if rate == 1 else 'FAILS'} ({rate:.0%} of {entry['sanity_n']}{'; ' + empties if empty else ''})"


def recommendation_text(result: BenchResult) -> str:
    """One paragraph: the method the numbers support, or that none meets the targets."""
    targets = (f"targets: pointing game >= {POINTING_TARGET:.2f}, mass in lesion >= {MASS_OVER_SHARE_TARGET:g} x the "
               "lesion's share of the body, randomisation check passed")
    best = recommended_method(result.summary)
    if best is None:
        ranked = rank_methods(result.summary)
        return (f"No method meets all targets ({targets}); the closest is {EXPLAINERS[ranked[0].method].title} "
                f"({'; '.join(ranked[0].failures)}).\n")
    return f"Recommended: {EXPLAINERS[best].title} — {evidence_line(result.summary[best])} ({targets}).\n"


def bench_json(result: BenchResult) -> dict[str, Any]:
    """What ``bench.json`` holds: settings, per-method summary, sanity checks, verdicts and the recommendation."""
    return {"model": result.model, "settings": result.settings, "summary": result.summary, "sanity": result.sanity,
            "verdicts": {v.method: v.to_dict() for v in rank_methods(result.summary)},
            "evidence": {m: evidence_line(e) for m, e in result.summary.items()},
            "recommended": recommended_method(result.summary),
            "targets": {"pointing_game": POINTING_TARGET, "mass_over_lesion_share": MASS_OVER_SHARE_TARGET}}


def write_bench(result: BenchResult, out: Path) -> dict[str, Path]:
    """``bench.csv`` (per case and method), ``bench.md`` (the table and the recommendation),
    ``bench.png`` (the plot) and ``bench.json`` (:func:`bench_json`) in the existing folder ``out``."""
    from .plots import plot_bench

    paths = {"csv": out / "bench.csv", "markdown": out / "bench.md", "plot": out / "bench.png", "json": out / "bench.json"}
    keys = list(dict.fromkeys(k for r in result.rows for k in r))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result.rows)
    header = (f"# Explanation bench — {result.model}\n\n{len(result.settings['cases'])} cases with a lesion; "
              f"mean [95 % bootstrap CI] over cases; randomisation check on the first "
              f"{result.settings['sanity_cases']} cases.\n\n")
    paths["markdown"].write_text(header + markdown_table(result) + "\n" + recommendation_text(result), encoding="utf-8")
    paths["json"].write_text(json.dumps(bench_json(result), indent=2) + "\n", encoding="utf-8")
    plot_bench(result.summary, METRICS, paths["plot"], title=f"{result.model}: explanation methods against the "
                                                              f"ground-truth lesion (95 % bootstrap CI)")
    return paths
