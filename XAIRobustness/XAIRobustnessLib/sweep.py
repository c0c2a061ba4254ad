"""Perturbation sweeps on the open case: where do the prediction and its explanation break?

For each perturbation × severity the case is degraded (:mod:`.perturbations`), prepared on the model
grid, and run through the model and the explainer — perturbed copies travel in batches sized to a
memory budget, one batched prediction and one batched ``attribute`` per chunk. Each result is compared
with the unperturbed one:

* ``confidence`` — probability of the class predicted on the unperturbed case (segmentation: of the
  explained class, averaged over the unperturbed predicted region);
* ``entropy`` — single-pass predictive entropy / log K (0 certain, 1 uniform);
* ``spearman``, ``topk_iou``, ``ssim`` — similarity of the explanation to the unperturbed one, inside
  the anatomy (:mod:`.similarity`);
* ``dice`` (segmentation) — overlap of the predicted lesion with the unperturbed prediction.

The explanation always explains the *same* target as on the unperturbed case. The summary of each
perturbation gives the severity at which the prediction flips (classification: another class;
segmentation: Dice < :data:`DICE_BREAK`) and at which the explanation decorrelates (Spearman <
:data:`SPEARMAN_BREAK`), and says whether that happens inside the clinically plausible range of the
model's modality — where the explanation should then not be trusted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import SimpleITK as sitk
import torch

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.pipeline import (
    ExplanationResult,
    PreparedCase,
    describe_prediction,
    build_provenance,
    map_statistics,
)
from XAIExplainLib.progress import CancelToken, ProgressCallback, Stage

from .perturbations import MAX_SEVERITY, Perturbation, default_perturbations, get_perturbation
from .reference import Reference, explain_reference, normalised_entropy, run_batched, target_probability
from .similarity import MapComparison, dice

__all__ = ["SPEARMAN_BREAK", "DICE_BREAK", "DEFAULT_SEVERITIES", "PerturbationSweep", "RobustnessSweep",
           "robustness_sweep", "perturbation_sweep"]

#: The explanation counts as decorrelated from the unperturbed one below this Spearman correlation.
SPEARMAN_BREAK = 0.5
#: A segmentation counts as changed when its Dice with the unperturbed prediction falls below this.
DICE_BREAK = 0.5
DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)


class _Lazy(Mapping):
    """A read-only mapping whose values are computed (once) on first access."""

    def __init__(self, keys: Sequence[float], load: Callable[[float], Any]) -> None:
        self._keys = list(keys)
        self._load = load
        self._cache: dict[float, Any] = {}

    def __getitem__(self, key: float) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = self._load(key)
        return self._cache[key]

    def __iter__(self) -> Iterator[float]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class PerturbationSweep:
    """One perturbation at each severity: table rows, summary, and (on demand) images and results.

    ``perturbed_images[s]`` regenerates the perturbed input (deterministic, so nothing is kept in
    memory); ``results[s]`` is an :class:`~XAIExplainLib.pipeline.ExplanationResult` whose saliency is
    on the input's grid.
    """

    perturbation: Perturbation
    severities: list[float]
    rows: list[dict]
    summary: dict
    perturbed_images: Mapping = field(repr=False)
    results: Mapping = field(repr=False)
    saliency_model_grid: dict[float, torch.Tensor] = field(repr=False, default_factory=dict)


@dataclass
class RobustnessSweep:
    """All perturbations of one run, with the unperturbed reference and settings."""

    sweeps: dict[str, PerturbationSweep]
    baseline: dict
    settings: dict
    provenance: dict
    timings_s: dict

    @property
    def rows(self) -> list[dict]:
        """Every row of every perturbation, with a ``perturbation`` column first (the CSV table)."""
        return [{"perturbation": key, **row} for key, sweep in self.sweeps.items() for row in sweep.rows]

    def warnings(self) -> list[str]:
        return [s.summary["verdict"] for s in self.sweeps.values() if not s.summary["trustworthy_in_plausible_range"]]

    def to_json(self) -> dict:
        return {
            "baseline": self.baseline,
            "settings": self.settings,
            "trustworthy_in_plausible_range": not self.warnings(),
            "warnings": self.warnings(),
            "perturbations": {key: {"perturbation": key, "summary": s.summary, "rows": s.rows}
                              for key, s in self.sweeps.items()},
            "provenance": self.provenance,
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


def robustness_sweep(
    image: sitk.Image,
    model: LoadedModel,
    perturbations: Optional[Sequence[str]] = None,
    severities: Sequence[float] = DEFAULT_SEVERITIES,
    method: str = "gradcam",
    seed: int = 0,
    method_params: Optional[dict[str, Any]] = None,
    memory_budget_mb: float = 2048,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    reference: Optional[Reference] = None,
    other_channels: Sequence[sitk.Image] = (),
) -> RobustnessSweep:
    """Sweep ``perturbations`` (default: the model modality's 8) over ``severities`` (0..5; 0 is always added).

    ``reference``: the unperturbed case already explained with ``method`` (:func:`.explain_reference`),
    when the caller has it. ``other_channels``: a multi-channel model's other volumes, each perturbed as the
    first. Same ``seed``, same sweep.
    """
    modality = model.spec.modality
    keys = list(dict.fromkeys(perturbations)) if perturbations else list(default_perturbations(modality))
    catalogue = [get_perturbation(key, modality) for key in keys]
    levels = _severities(severities)
    stage = Stage(progress, cancel)
    clock = time.perf_counter()
    if reference is None:
        reference = explain_reference(image, model, method, seed, method_params, memory_budget_mb, stage.sub(0.0, 0.05),
                                      other_channels=other_channels)
    timings = {"reference": time.perf_counter() - clock}

    jobs = [(p, s) for p in catalogue for s in levels if s > 0]
    outcomes: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]] = {}
    perturb_s = model_s = 0.0
    work = stage.sub(0.05, 0.98)
    for start in range(0, len(jobs), reference.chunk):
        chunk = jobs[start:start + reference.chunk]
        clock = time.perf_counter()
        inputs = []
        for i, (perturbation, severity) in enumerate(chunk):
            work.report((start + i) / max(len(jobs), 1), f"{perturbation.title}, severity {severity:g}")
            inputs.append(reference.perturbed_inputs(model, perturbation, severity, seed))
        perturb_s += time.perf_counter() - clock
        clock = time.perf_counter()
        work.report((start + len(chunk) - 0.5) / max(len(jobs), 1), f"model and explanation, {len(chunk)} cases")
        probabilities, maps = run_batched(model, reference, torch.cat(inputs))
        model_s += time.perf_counter() - clock
        for i, (perturbation, severity) in enumerate(chunk):
            outcomes[(perturbation.key, severity)] = (probabilities[i], maps[i])
    timings.update(perturb_and_prepare=perturb_s, model_and_explain=model_s)

    clock = time.perf_counter()
    comparison = MapComparison(reference.saliency, reference.anatomy, absolute=reference.explainer.signed)
    sweeps = {p.key: _sweep_of(p, levels, reference, outcomes, model, seed, comparison) for p in catalogue}
    timings["compare"] = time.perf_counter() - clock
    stage.report(1.0, "done")
    timings["total"] = sum(timings.values())
    return RobustnessSweep(
        sweeps=sweeps,
        baseline=_describe_baseline(reference, model),
        settings={"method": method, "seed": seed, "severities": levels, "perturbations": keys,
                  "modality": modality, "spearman_break": SPEARMAN_BREAK, "dice_break": DICE_BREAK,
                  "topk_percent": 10.0, "batch_size": reference.chunk, "memory_budget_mb": memory_budget_mb,
                  "catalogue": {p.key: p.to_json(modality) for p in catalogue},
                  "compared_on": "model grid, inside the anatomy (foreground of the input)"},
        provenance=build_provenance(model, method, reference.explainer.parameters(), reference.target, "none", 0, (),
                               seed, image),
        timings_s=timings,
    )


def perturbation_sweep(image: sitk.Image, model: LoadedModel, perturbation: str,
                       severities: Sequence[float] = (0, *DEFAULT_SEVERITIES), method: str = "gradcam",
                       seed: int = 0, progress: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None, **kwargs: Any) -> PerturbationSweep:
    """One perturbation over ``severities`` (the Slicer module's sweep)."""
    return robustness_sweep(image, model, [perturbation], severities, method, seed, progress=progress,
                            cancel=cancel, **kwargs).sweeps[perturbation]


def _severities(severities: Sequence[float]) -> list[float]:
    values = []
    for s in severities:
        try:
            value = float(s)
        except (TypeError, ValueError):
            raise XAIInputError(f"Severity {s!r} is not a number.") from None
        if not 0 <= value <= MAX_SEVERITY:
            raise XAIInputError(f"Severity {value:g} is outside 0..{MAX_SEVERITY}.")
        values.append(int(value) if value.is_integer() else value)
    return sorted(set([0, *values]))


def _sweep_of(perturbation: Perturbation, levels: list[float], reference: Reference,
              outcomes: dict, model: LoadedModel, seed: int, comparison: MapComparison) -> PerturbationSweep:
    maps = {0: reference.saliency}
    probabilities = {0: reference.probabilities}
    for s in levels:
        if s > 0:
            probabilities[s], maps[s] = outcomes[(perturbation.key, s)]
    rows = [_row(perturbation, s, probabilities[s], maps[s], reference, model, comparison) for s in levels]
    summary = _summarise(perturbation, rows, model.spec.modality)

    def perturbed_image(severity: float) -> sitk.Image:
        return perturbation(reference.image, severity, seed, reference.stats)

    def result(severity: float) -> ExplanationResult:
        return _result(perturbation, severity, probabilities[severity], maps[severity], reference, model, seed)

    return PerturbationSweep(perturbation, levels, rows, summary, _Lazy(levels, perturbed_image),
                             _Lazy(levels, result), maps)


def _row(perturbation: Perturbation, severity: float, probabilities: torch.Tensor, saliency: torch.Tensor,
         reference: Reference, model: LoadedModel, comparison: MapComparison) -> dict:
    batch = probabilities[None]
    names = model.spec.class_names
    region = reference.predicted_mask() == reference.target.class_index if reference.is_segmentation else None
    row: dict[str, Any] = {"severity": severity, "value": perturbation.describe_value(severity)}
    if reference.is_segmentation:
        mask, base = probabilities.argmax(dim=0), reference.predicted_mask()
        overlap = dice(mask == reference.target.class_index, base == reference.target.class_index)
        row["predicted_label"] = names[reference.target.class_index] if bool((mask == reference.target.class_index).any()) \
            else names[0]
        row["prediction_changed"] = overlap < DICE_BREAK
        row["confidence"] = float(target_probability(reference, batch)[0])
        row["dice"] = overlap
    else:
        predicted, base = int(probabilities.argmax()), int(reference.probabilities.argmax())
        row["predicted_label"] = names[predicted]
        row["prediction_changed"] = predicted != base
        row["confidence"] = float(probabilities[base])
    row["entropy"] = float(normalised_entropy(batch, region)[0])
    row.update(comparison(saliency))
    return row


def _first(rows: list[dict], broken: Callable[[dict], bool]) -> Optional[float]:
    return next((row["severity"] for row in rows if row["severity"] > 0 and broken(row)), None)


def _summarise(perturbation: Perturbation, rows: list[dict], modality: Optional[str]) -> dict:
    plausible = perturbation.plausible_max(modality)
    flip = _first(rows, lambda r: r["prediction_changed"])
    decorrelated = _first(rows, lambda r: r["spearman"] < SPEARMAN_BREAK)
    prediction_breaks = flip is not None and flip <= plausible
    explanation_breaks = decorrelated is not None and decorrelated <= plausible
    title = perturbation.title
    if prediction_breaks or explanation_breaks:
        parts = []
        if prediction_breaks:
            parts.append(f"the prediction changes at severity {flip:g} ({perturbation.describe_value(flip)})")
        if explanation_breaks:
            parts.append(f"the explanation decorrelates at severity {decorrelated:g} "
                         f"({perturbation.describe_value(decorrelated)})")
        verdict = (f"{title}: {' and '.join(parts)}, within the clinically plausible range (up to severity "
                   f"{plausible:g}, {perturbation.describe_value(plausible)}): do not trust the explanation on images "
                   f"with this degradation.")
    else:
        tested = max(r["severity"] for r in rows)
        breaks = [f"prediction changes at {flip:g}" if flip is not None else "",
                  f"explanation decorrelates at {decorrelated:g}" if decorrelated is not None else ""]
        beyond = "; ".join(b for b in breaks if b)
        verdict = (f"{title}: prediction and explanation stable within the plausible range (up to severity "
                   f"{plausible:g})" + (f"; beyond it the {beyond}." if beyond else f" and up to {tested:g} tested."))
    return {
        "perturbation": perturbation.key,
        "title": title,
        "plausible_max_severity": plausible,
        "flip_severity": flip,
        "decorrelation_severity": decorrelated,
        "prediction_breaks_in_plausible_range": prediction_breaks,
        "explanation_breaks_in_plausible_range": explanation_breaks,
        "trustworthy_in_plausible_range": not (prediction_breaks or explanation_breaks),
        "min_spearman": min(r["spearman"] for r in rows),
        "min_confidence": min(r["confidence"] for r in rows),
        "verdict": verdict,
    }


def _describe_baseline(reference: Reference, model: LoadedModel) -> dict:
    names = model.spec.class_names
    baseline = {
        "task": model.spec.task,
        "target": {"class_index": reference.target.class_index, "class_name": reference.target.class_name,
                   "description": reference.target.description},
        "method": reference.method,
        "method_name": reference.explainer.title,
    }
    if reference.is_segmentation:
        baseline["predicted_voxels"] = int((reference.predicted_mask() == reference.target.class_index).sum())
    else:
        predicted = int(reference.probabilities.argmax())
        baseline.update(predicted_label=names[predicted], confidence=float(reference.probabilities[predicted]),
                        probabilities={n: float(p) for n, p in zip(names, reference.probabilities)})
    return baseline


def _result(perturbation: Perturbation, severity: float, probabilities: torch.Tensor, saliency: torch.Tensor,
            reference: Reference, model: LoadedModel, seed: int) -> ExplanationResult:
    """The perturbed case's outcome in the shape XAIExplain shows (saliency on the input grid)."""
    case = PreparedCase(image=reference.image, grid=reference.case.grid, inputs=reference.case.inputs)
    prediction, segmentation = describe_prediction(model, case, probabilities[None])
    saliency_image = case.to_input_grid(saliency)
    explainer = reference.explainer
    target = reference.target
    provenance = build_provenance(model, reference.method, explainer.parameters(), target, "none", 0, (), seed,
                             reference.image)
    provenance["perturbation"] = {"key": perturbation.key, "severity": severity,
                                  "value": perturbation.describe_value(severity), "seed": seed}
    return ExplanationResult(
        saliency=saliency_image,
        prediction=prediction,
        explanation={"method": reference.method, "method_name": explainer.title, "reference": explainer.reference,
                     "parameters": explainer.parameters(), "value_meaning": explainer.value_meaning(),
                     "target": {"class_index": target.class_index, "class_name": target.class_name,
                                "description": target.description, "region_voxels": target.region_voxels},
                     "statistics": map_statistics(saliency_image)},
        provenance=provenance,
        segmentation=segmentation,
    )
