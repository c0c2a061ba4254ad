"""One case of an audit, on a Dask worker: prediction, the task's recommended explanation, uncertainty,
applicability, stability under mild plausible perturbations, faithfulness, the randomisation check (on the
sampled cases), and, against a reference, localisation and correctness.

The checks are the ones ``slicer-xai bench`` and the Robustness module use (same functions, same seeds):
Adebayo et al. 2018 (randomisation), Petsiuk et al. 2018 (deletion/insertion), Zhang et al. 2016 (pointing
game). A case that fails becomes a row with its one-line error: it never stops the audit.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from XAIExplainLib.errors import XAIError

from .cohort import AuditCase

__all__ = ["AuditSettings", "audit_case"]

#: Deletion/insertion curve points and random orderings per case (as the bench: enough to rank, fast).
FAITHFULNESS_STEPS, FAITHFULNESS_RANDOM = 10, 2


@dataclass(frozen=True)
class AuditSettings:
    """What every case is run with; an audit folder may only be resumed with the same settings."""

    model: str
    trust_bundle: bool = False
    method: Optional[str] = None  # None: the clinical task's recommended method
    uncertainty: Optional[str] = None  # None: the task's recommended estimate
    samples: int = 8
    seed: int = 0
    stability: bool = True
    faithfulness: bool = True
    sanity_cases: int = 1
    memory_budget_mb: float = 1024

    def to_dict(self) -> dict:
        return asdict(self)


_MODELS: dict = {}  # per worker process: each worker loads the model once
_LOADS = {"count": 0}


def _model(settings: AuditSettings):
    from XAIExplainLib.models import load_model

    key = (settings.model, settings.trust_bundle)
    if key not in _MODELS:
        import SimpleITK as sitk
        import torch

        # One case per worker thread: the cluster, not torch or ITK's own thread pool, spreads the work (Dask
        # limits OpenMP and BLAS threads in its workers; ITK would still take every core for each resampling).
        torch.set_num_threads(1)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        _MODELS[key] = load_model(settings.model, trust_bundle=settings.trust_bundle)
        _LOADS["count"] += 1
    return _MODELS[key]


def audit_case(case: AuditCase, settings: AuditSettings, sanity: bool = False) -> dict:
    """The row of ``case``: ``status`` ``ok`` with its measurements, or ``error`` with the reason."""
    started = time.perf_counter()
    row: dict[str, Any] = case.row()
    try:
        row.update(_measure(case, settings, sanity))
        row["status"] = "ok"
    except XAIError as error:
        row.update(status="error", error=_one_line(str(error)))
    except Exception as error:  # noqa: BLE001 - one bad case (or a bug it triggers) must not end the audit
        row.update(status="error", error=_one_line(f"{type(error).__name__}: {error}"))
    row["runtime_s"] = round(time.perf_counter() - started, 3)
    row["worker_pid"] = os.getpid()
    row["worker_model_loads"] = _LOADS["count"]
    row["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def _measure(case: AuditCase, settings: AuditSettings, sanity: bool) -> dict:
    import SimpleITK as sitk

    from XAIExplainLib.imageio import read_mask
    from XAIExplainLib.pipeline import explain_image
    from XAIExplainLib.tasks import methods_for_task, task_for_model
    from XAIRobustnessLib.faithfulness import faithfulness_test
    from XAIRobustnessLib.localisation import localisation_scores
    from XAIRobustnessLib.reference import explain_reference
    from XAIRobustnessLib.sanity import sanity_check
    from XAIRobustnessLib.sweep import robustness_sweep

    model = _model(settings)
    task = task_for_model(model.spec)
    method = settings.method or methods_for_task(task, model.spec)[0]
    uncertainty = settings.uncertainty or task.uncertainty.method
    image = _read_case_image(case)
    lesion = None
    if case.mask:
        lesion = sitk.Resample(read_mask(case.mask), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                               sitk.sitkUInt8)
    # The finding's class is explained (as the bench does), so that a missed lesion shows as evidence
    # away from it rather than as a map of the evidence for "no lesion".
    finding = model.spec.positive_class
    params = {"memory_budget_mb": settings.memory_budget_mb}
    result = explain_image(image, model, method=method, target=finding, uncertainty=uncertainty,
                           samples=settings.samples, seed=settings.seed, method_params=params)
    prediction, info = result.prediction, result.uncertainty_info
    row: dict[str, Any] = {
        "task": task.id, "method": method, "uncertainty_method": uncertainty,
        "explained_class": result.explanation["target"]["class_name"], "positive_class": finding,
        "predicted_class": prediction.get("predicted_class"), "predicted_label": prediction.get("predicted_label"),
        "confidence": prediction.get("confidence"),
        "positive_probability": _positive_probability(prediction, finding),
        "uncertainty_std": info.get("predicted_class_std"), "predictive_entropy": info.get("predictive_entropy"),
        "agreement": info.get("agreement"),
        "inside_domain": result.applicability.get("inside"),
        "outside_domain": [c["detail"] for c in result.applicability.get("checks", []) if c.get("inside") is False],
        "evidence_max": result.explanation["statistics"]["max"],
    }
    # A map without any evidence for the finding has no peak worth opening the viewer at.
    if (result.explanation["statistics"]["max"] or 0) > 0:
        row["peak_ras_mm"] = result.explanation["statistics"]["peak_ras_mm"]
        row["peak_ijk"] = result.explanation["statistics"]["peak_ijk"]
    if case.label is not None and prediction.get("predicted_class") is not None:
        row["correct"] = int(prediction["predicted_class"]) == int(case.label)
    if lesion is not None and sitk.GetArrayViewFromImage(lesion).any():
        row.update({f"loc_{k}": (bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
                    for k, v in localisation_scores(result.saliency, lesion, image).to_dict().items()})
    if lesion is not None and result.segmentation is not None and finding is not None:
        predicted = sitk.GetArrayViewFromImage(result.segmentation) == finding
        truth = sitk.GetArrayViewFromImage(lesion) > 0
        both = int(predicted.sum() + truth.sum())
        row["dice"] = 2.0 * int((predicted & truth).sum()) / both if both else 1.0
    row["thumbnail_png"] = _thumbnail(image, result.saliency, lesion, row.get("peak_ras_mm"))
    if settings.stability or settings.faithfulness or sanity:
        reference = explain_reference(image, model, method, settings.seed, target=finding,
                                      memory_budget_mb=settings.memory_budget_mb)
        if settings.stability:
            sweep = robustness_sweep(image, model, severities=(1,), method=method, seed=settings.seed,
                                     reference=reference, memory_budget_mb=settings.memory_budget_mb)
            mild = [r for r in sweep.rows if r["severity"] == 1]
            row["stability_spearman"] = _mean([r.get("spearman") for r in mild])
            row["prediction_flips"] = sorted(r["perturbation"] for r in mild if r.get("prediction_changed"))
        if settings.faithfulness:
            test = faithfulness_test(image, model, method, steps=FAITHFULNESS_STEPS, n_random=FAITHFULNESS_RANDOM,
                                     seed=settings.seed, reference=reference,
                                     memory_budget_mb=settings.memory_budget_mb)
            row.update(deletion_auc=test.deletion_auc, insertion_auc=test.insertion_auc, faithful=bool(test.passed))
        if sanity:
            check = sanity_check(image, model, method, seed=settings.seed, reference=reference)
            row.update(sanity_passed=bool(check.passed), sanity_final_spearman=check.final_spearman)
    return row


def _read_case_image(case: AuditCase):
    """The case's image: read from its file or folder, or its study's image series fetched from the PACS
    (into a temporary folder, removed at once)."""
    from XAIExplainLib.imageio import read_image

    if case.pacs is None:
        return read_image(case.image)
    from XAIExplainLib.dicom.pacs import fetched_series

    with fetched_series(case.pacs.client(), case.study_uid) as (folder, _):
        return read_image(folder, name=f"The image series of study {case.study_uid}")


def _thumbnail(image, saliency, lesion, peak_ras) -> str:
    """The axial key slice through the evidence peak, saliency over the image and the reference outlined,
    as base64 PNG (rendered here, on the worker, where the volumes are; the client only stores it)."""
    import base64

    import SimpleITK as sitk

    from XAIExplainLib.report.figures import OUTLINE_COLOURS, Outline, Overlay, key_slices_png

    values = sitk.GetArrayViewFromImage(image)
    window = (float(np.percentile(values, 1)), float(np.percentile(values, 99.5)))
    if peak_ras is None:  # no evidence: the slice through the middle of the volume
        centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        peak_ras = (-centre[0], -centre[1], centre[2])
    outlines = [Outline(lesion, OUTLINE_COLOURS["lesion"])] if lesion is not None else []
    png = key_slices_png(image, (-peak_ras[0], -peak_ras[1], peak_ras[2]), ["axial"], window,
                         overlay=Overlay(saliency, hide_below=0.2), outlines=outlines, panel_inches=2.2)
    return base64.b64encode(png).decode("ascii")


def _positive_probability(prediction: dict, finding) -> Optional[float]:
    names, probabilities = prediction.get("class_names") or [], prediction.get("probabilities") or {}
    if finding is None or not isinstance(probabilities, dict):
        return None
    name = names[finding] if isinstance(finding, int) and finding < len(names) else finding
    value = probabilities.get(name)
    return float(value) if value is not None else None


def _mean(values) -> Optional[float]:
    numbers = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(numbers)) if numbers else None


def _one_line(text: str) -> str:
    return (text.strip().splitlines() or ["unknown error"])[0][:300]
