"""The facts of one case, gathered once from the engine's results, that every audience's writer and the
report words and draws: prediction, where each method's evidence is, how methods agree, uncertainty,
trust checks, and whether a reader should review the case.

The writers only word these facts; change a result and the facts, hence the words, change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import XAIInputError
from ..tasks import ClinicalTask
from .evidence import MapAgreement, RegionFacts, describe_region, map_agreement, plain_location
from .trust import FAILED, Check, TrustEvidence, assess_trust

__all__ = ["MethodFacts", "UncertaintyFacts", "CaseFacts", "build_case_facts"]


@dataclass
class MethodFacts:
    """One explanation method's map on this case."""

    method: str
    title: str
    reference: str
    parameters: dict
    value_meaning: str
    signed: bool
    advice: str  # "recommended", "neutral" or "avoid" for the task
    advice_reason: Optional[str]
    value_range: tuple[float, float]
    region: RegionFacts
    saliency: sitk.Image = field(repr=False)

    def to_dict(self) -> dict:
        return {"method": self.method, "title": self.title, "reference": self.reference,
                "parameters": self.parameters, "value_meaning": self.value_meaning, "signed": self.signed,
                "advice": self.advice, "advice_reason": self.advice_reason, "value_range": list(self.value_range),
                "region": self.region.to_dict()}


@dataclass
class UncertaintyFacts:
    """How sure the model is, with the measure the task asks for and the reasons it is "high"."""

    method: str
    samples: Optional[int] = None
    measure: Optional[str] = None
    values: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    low_confidence: bool = False
    variable: bool = False
    map_meaning: Optional[str] = None
    map: Optional[sitk.Image] = field(default=None, repr=False)

    @property
    def estimated(self) -> bool:
        return self.method != "none"

    @property
    def high(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return {"method": self.method, "samples": self.samples, "measure": self.measure, "values": self.values,
                "high": self.high, "low_confidence": self.low_confidence,
                "variable": self.variable, "reasons": self.reasons, "map_meaning": self.map_meaning}


@dataclass
class CaseFacts:
    """Everything the audiences' writers and the report need about one case."""

    task: ClinicalTask
    model: dict
    prediction: dict
    finding_present: bool
    primary: str
    methods: dict[str, MethodFacts]
    agreement: list[MapAgreement]
    uncertainty: UncertaintyFacts
    checks: list[Check]
    review_reasons: list[str]
    caveats: list[str]
    location: dict[str, str]
    provenance: dict
    image: sitk.Image = field(repr=False)
    lesion: Optional[sitk.Image] = field(default=None, repr=False)
    segmentation: Optional[sitk.Image] = field(default=None, repr=False)

    @property
    def review(self) -> bool:
        """Whether a reader should look again: uncertainty is high or the explanation failed a check."""
        return bool(self.review_reasons)

    @property
    def main(self) -> MethodFacts:
        return self.methods[self.primary]

    @property
    def checks_run(self) -> list[Check]:
        return [c for c in self.checks if c.status != "not run"]

    def to_dict(self) -> dict:
        """Plain JSON values (no images)."""
        return {
            "task": {"id": self.task.id, "title": self.task.title, "question": self.task.question},
            "model": self.model,
            "prediction": self.prediction,
            "finding_present": self.finding_present,
            "primary_method": self.primary,
            "methods": {key: m.to_dict() for key, m in self.methods.items()},
            "agreement": [a.__dict__ for a in self.agreement],
            "uncertainty": self.uncertainty.to_dict(),
            "checks": [c.__dict__ for c in self.checks],
            "review_recommended": self.review,
            "review_reasons": self.review_reasons,
            "caveats": self.caveats,
            "location": self.location,
            "provenance": self.provenance,
        }


def build_case_facts(
    image: sitk.Image,
    results: Mapping[str, Any],
    task: ClinicalTask,
    model_spec: Any,
    top_percent: float,
    lesion: Optional[sitk.Image] = None,
    trust: Optional[TrustEvidence] = None,
    caveats: Sequence[str] = (),
) -> CaseFacts:
    """Gather the facts of one case.

    ``results``: method key -> engine result (:class:`~XAIExplainLib.pipeline.ExplanationResult` or
    anything with ``saliency``, ``prediction``, ``explanation``, ``uncertainty``, ``uncertainty_info``,
    ``segmentation`` and ``provenance``), the primary method first (its uncertainty is the case's).
    ``model_spec``: the model's :class:`~XAIExplainLib.models.ModelSpec`. ``lesion``: a mask on the
    image's grid. ``top_percent``: the share of voxels that counts as a map's main evidence.
    """
    from ..explainers import EXPLAINERS

    if not results:
        raise XAIInputError("No explanation results to describe.")
    if lesion is not None and lesion.GetSize() != image.GetSize():
        raise XAIInputError("The lesion mask is not on the image's grid.")
    primary_key = next(iter(results))
    primary = results[primary_key]
    prediction = dict(primary.prediction)
    methods: dict[str, MethodFacts] = {}
    for key, result in results.items():
        explanation = result.explanation
        advice, reason = task.advice(key)
        statistics = explanation.get("statistics", {})
        methods[key] = MethodFacts(
            method=key, title=explanation.get("method_name", key), reference=explanation.get("reference", ""),
            parameters=dict(explanation.get("parameters", {})), value_meaning=explanation.get("value_meaning", ""),
            signed=bool(EXPLAINERS[key].signed) if key in EXPLAINERS else False, advice=advice, advice_reason=reason,
            value_range=(float(statistics.get("min", np.nan)), float(statistics.get("max", np.nan))),
            region=describe_region(result.saliency, top_percent, lesion), saliency=result.saliency,
        )
    agreement = [map_agreement(a, methods[a].saliency, methods[a].region.mask, b, methods[b].saliency, methods[b].region.mask)
                 for a, b in combinations(methods, 2)]
    uncertainty = _uncertainty_facts(primary, task, prediction)
    checks = assess_trust(trust or TrustEvidence(), task, prediction.get("predicted_label"))
    review = list(uncertainty.reasons)
    review += [check.detail for check in checks if check.status == FAILED]
    outside = [c["detail"] for c in (getattr(primary, "applicability", None) or {}).get("checks", []) if not c["inside"]]
    if outside:
        review.append("The case lies outside what the model was trained on: " + "; ".join(outside) + ".")
    if methods[primary_key].value_range[1] <= 0:
        review.append(f"The {methods[primary_key].title} map shows no evidence for the target at all.")
    all_caveats = list(caveats)
    if not uncertainty.estimated:
        all_caveats.append("Uncertainty was not estimated for this run.")
    if methods[primary_key].advice == "avoid":
        all_caveats.append(f"{methods[primary_key].title} is a method this task advises against: {methods[primary_key].advice_reason}")
    return CaseFacts(
        task=task,
        model={**primary.provenance.get("model", {}), "modality": getattr(model_spec, "modality", None),
               "data_source": (getattr(model_spec, "metadata", {}) or {}).get("data_source")},
        prediction=prediction,
        finding_present=_finding_present(prediction, model_spec),
        primary=primary_key,
        methods=methods,
        agreement=agreement,
        uncertainty=uncertainty,
        checks=checks,
        review_reasons=review,
        caveats=all_caveats,
        location=plain_location(image, methods[primary_key].region.peak_ijk),
        provenance=dict(primary.provenance),
        image=image,
        lesion=lesion,
        segmentation=getattr(primary, "segmentation", None),
    )


def _finding_present(prediction: Mapping[str, Any], model_spec: Any) -> bool:
    if prediction.get("task") == "segmentation":
        return bool(prediction.get("found"))
    positive = getattr(model_spec, "positive_class", None)
    if positive is None:
        positive = len(prediction.get("class_names", ())) - 1
    return int(prediction.get("predicted_class", -1)) == positive


def _uncertainty_facts(result: Any, task: ClinicalTask, prediction: Mapping[str, Any]) -> UncertaintyFacts:
    info = dict(getattr(result, "uncertainty_info", None) or {"method": "none"})
    facts = UncertaintyFacts(method=info.get("method", "none"), samples=info.get("samples"),
                             measure=task.uncertainty.measure, map_meaning=info.get("map"),
                             map=getattr(result, "uncertainty", None))
    limits = task.review
    confidence = float(prediction.get("confidence", np.nan))
    if "min_confidence" in limits and confidence < limits["min_confidence"]:
        facts.reasons.append(f"Confidence {confidence:.2f} is below {limits['min_confidence']:.2f}.")
        facts.low_confidence = True
    before = len(facts.reasons)
    if not facts.estimated:
        return facts
    if prediction.get("task") == "segmentation":
        _segmentation_uncertainty(facts, info, result, limits)
        facts.variable = len(facts.reasons) > before
    else:
        for key in ("predicted_class_std", "predicted_class_interval_95", "agreement", "predictive_entropy",
                    "mutual_information"):
            if key in info:
                facts.values[key] = info[key]
        std, agreement = info.get("predicted_class_std"), info.get("agreement")
        if std is not None and "max_predicted_class_std" in limits and std > limits["max_predicted_class_std"]:
            facts.reasons.append(f"The predicted class probability varies by {std:.2f} (SD) across "
                                 f"{facts.samples} {facts.method} samples (limit {limits['max_predicted_class_std']:.2f}).")
        if agreement is not None and "min_agreement" in limits and agreement < limits["min_agreement"]:
            changed = round((1 - agreement) * (facts.samples or 0))
            facts.reasons.append(f"The predicted class changes in {changed} of {facts.samples} {facts.method} samples.")
        facts.variable = len(facts.reasons) > before
    return facts


def _segmentation_uncertainty(facts: UncertaintyFacts, info: Mapping[str, Any], result: Any,
                              limits: Mapping[str, float]) -> None:
    facts.values["mean_mutual_information"] = info.get("mean_mutual_information")
    entropy_map, segmentation = getattr(result, "uncertainty", None), getattr(result, "segmentation", None)
    max_entropy = float(info.get("max_entropy") or np.log(2))
    if entropy_map is None or segmentation is None:
        return
    entropy = sitk.GetArrayViewFromImage(entropy_map) / max_entropy
    region = sitk.GetArrayViewFromImage(segmentation) > 0
    voxel_ml = float(np.prod(entropy_map.GetSpacing())) / 1000.0
    facts.values["doubtful_ml"] = float((entropy > 0.5).sum() * voxel_ml)
    if region.any():
        lesion_entropy = float(entropy[region].mean())
        facts.values["lesion_entropy"] = lesion_entropy
        limit = limits.get("max_lesion_entropy")
        if limit is not None and lesion_entropy > limit:
            facts.reasons.append(f"The outline is uncertain: mean entropy inside it is {lesion_entropy:.2f} of the "
                                 f"maximum (limit {limit:.2f}).")
    elif facts.values["doubtful_ml"] >= 0.1:
        facts.reasons.append(f"No lesion was segmented, but the model is unsure about {facts.values['doubtful_ml']:.1f} mL.")
