"""One case through one model: prediction, explanation and uncertainty, all on the input's grid.

This is the function every front door calls (command line, Slicer modules, web viewer)::

    result = explain_image(image, load_model("brain-lesion-classifier"), method="gradcam")
    result.saliency      # SimpleITK image, float32, exactly the input's geometry
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__
from .errors import XAIInputError, XAIModelError
from .casecache import MAX_RECORDED_VOXELS, CachedCase, CaseCache, map_key
from .explainers import EXPLAINERS, Explainer, make_explainer
from .explainers.windowed import SlidingWindows, attribute_by_windows, windowed_score
from .explainers.cam import LayerRecording
from .applicability import assess_applicability
from .imageio import describe_geometry, validate_image
from .models import LoadedModel
from .preprocessing import model_grid, normalise_intensity, to_input_grid, to_model_grid
from .progress import CancelToken, ProgressCallback, Stage
from .targets import Target, TargetFn, class_logit, region_logit_sum
from .uncertainty import (
    UNCERTAINTY_METHODS,
    classification_summary,
    entropy,
    mc_dropout,
    mutual_information,
    sample_probabilities,
    tta_augmentations,
)

__all__ = ["PreparedCase", "ExplanationResult", "prepare_case", "predict_logits", "predict_probabilities",
           "probabilities_from_logits", "uses_sliding_window", "attribute_case", "explain_image", "CaseCache",
           "map_statistics", "describe_prediction", "resolve_target", "structure_uncertainty",
           "predicted_structures", "explainer_params", "build_provenance"]

#: Methods that need a single forward and backward pass: cheap enough to repeat per uncertainty sample.
_SINGLE_PASS_METHODS = ("gradcam", "gradcampp", "gradient")
#: Methods that read one layer's activations (kept by the case cache).
_CAM_METHODS = ("gradcam", "gradcampp")


@dataclass
class PreparedCase:
    """The input image, the model grid it was resampled to, and the normalised network input."""

    image: sitk.Image
    grid: sitk.Image
    inputs: torch.Tensor  # [1, 1, X, Y, Z]

    def to_input_grid(self, array: np.ndarray | torch.Tensor, outside: float = 0.0) -> sitk.Image:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        return to_input_grid(np.asarray(array, dtype=np.float32), self.grid, self.image, outside)

    def probabilities_to_input_grid(self, probabilities: torch.Tensor, background: bool = True) -> np.ndarray:
        """Class probability maps ``[K, X, Y, Z]`` on the model grid -> ``[K, k, j, i]`` on the input grid.

        Outside the model's field of view everything is background: class 0 (``background``), or no structure
        at all (multi-label outputs, where every channel is a structure).
        """
        return np.stack([
            sitk.GetArrayFromImage(self.to_input_grid(probabilities[c], outside=1.0 if c == 0 and background else 0.0))
            for c in range(probabilities.shape[0])
        ])


@dataclass
class ExplanationResult:
    """Everything one run produced; maps are SimpleITK images on the input's grid."""

    saliency: sitk.Image
    prediction: dict
    explanation: dict
    provenance: dict
    uncertainty: Optional[sitk.Image] = None
    uncertainty_info: dict = field(default_factory=dict)
    segmentation: Optional[sitk.Image] = None
    timings_s: dict = field(default_factory=dict)
    #: What came from the case cache instead of being computed (``forward``, ``map``, ``uncertainty``).
    reused: tuple[str, ...] = ()
    #: Whether the case lies inside the training domain the card states (:mod:`XAIExplainLib.applicability`).
    applicability: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "prediction": self.prediction,
            "explanation": self.explanation,
            "uncertainty": self.uncertainty_info or {"method": "none"},
            "provenance": self.provenance,
            "applicability": self.applicability or {"inside": None, "checks": []},
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            **({"reused_from_cache": list(self.reused)} if self.reused else {}),
        }


def prepare_case(image: sitk.Image, model: LoadedModel, other_channels: Sequence[sitk.Image] = ()) -> PreparedCase:
    """Resample ``image`` (and, for a multi-channel model, its ``other_channels`` in the card's channel order)
    onto the model's grid, set by ``image``, and normalise each channel as the model card says."""
    volumes = [image, *other_channels]
    for index, volume in enumerate(volumes):
        validate_image(volume, _channel_label(model, index) if 1 < len(volumes) <= model.spec.num_channels else "image")
    if len(volumes) != model.spec.num_channels:
        names = model.spec.channel_names
        raise XAIModelError(
            f"Model {model.model_id} takes {model.spec.num_channels} input volume(s), one per channel in this order: "
            f"{', '.join(names)}; {len(volumes)} given.")
    for index, volume in enumerate(other_channels, start=1):
        _check_same_region(image, volume, _channel_label(model, index))
    if model.runtime is not None:
        grid, inputs = model.runtime.prepare(volumes)
        return PreparedCase(image=image, grid=grid, inputs=inputs)
    grid = model_grid(image, model.spec.input)
    arrays = [normalise_intensity(to_model_grid(volume, grid), model.spec.intensity) for volume in volumes]
    return PreparedCase(image=image, grid=grid, inputs=torch.from_numpy(np.stack(arrays))[None])


def _channel_label(model: LoadedModel, index: int) -> str:
    return f"input {index + 1} ({model.spec.channel_names[index]})"


def _check_same_region(reference: sitk.Image, volume: sitk.Image, label: str) -> None:
    """Refuse a channel that does not cover the first input's centre: it would be resampled to nothing."""
    size = np.asarray(reference.GetSize(), dtype=float)
    centre = reference.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    index = np.asarray(volume.TransformPhysicalPointToContinuousIndex(centre))
    if np.any(index < -0.5) or np.any(index > np.asarray(volume.GetSize()) - 0.5):
        raise XAIInputError(f"{label} does not cover the centre of the first input: the inputs must be the same "
                            f"region (the sequences of one study).")


def channel_evidence(model: LoadedModel, inputs: torch.Tensor, target: Target) -> Optional[dict[str, Any]]:
    """How much of the target's evidence each input channel carried: each channel's share of the summed
    |gradient x input| (Shrikumar et al., "Not Just a Black Box", 2016), one extra backward pass whatever the
    method (the maps themselves add or pool the channels). None for a one-channel model."""
    if inputs.shape[1] < 2:
        return None
    from .explainers.gradients import input_gradients

    network, score = _score_network(model, inputs, target)
    contribution = (input_gradients(network, inputs, score) * inputs).abs()[0].flatten(1).sum(dim=1)
    total = float(contribution.sum())
    names = model.spec.channel_names
    return {"measure": "share of |gradient x input| per input channel (Shrikumar et al. 2016)",
            "shares": {names[c]: (float(contribution[c]) / total if total > 0 else 0.0) for c in range(inputs.shape[1])}}


def attribute_case(model: LoadedModel, explainer: Explainer, inputs: torch.Tensor, target: Target,
                   stage: Optional[Stage] = None) -> tuple[torch.Tensor, Optional[dict]]:
    """The explainer's map of ``target`` on the model grid, and, for a model predicted in sliding windows, how
    the explanation was run window by window (:mod:`XAIExplainLib.explainers.windowed`); else None."""
    if target.region is None or not uses_sliding_window(model, inputs):
        return explainer.attribute(inputs, target.fn, stage), None
    return attribute_by_windows(explainer, inputs, target.class_index, target.region, sliding_windows(model, inputs),
                                stage)


def _score_network(model: LoadedModel, inputs: torch.Tensor, target: Target) -> tuple[torch.nn.Module, TargetFn]:
    """What to take gradients of for ``target``: the network, or the sliding-window model's windowed score."""
    if target.region is None or not uses_sliding_window(model, inputs):
        return model.network, target.fn
    return windowed_score(model.network, target.class_index, target.region, sliding_windows(model, inputs))


def sliding_windows(model: LoadedModel, inputs: torch.Tensor) -> SlidingWindows:
    """The windows ``model`` is predicted in on the grid of ``inputs``: its framework's, else MONAI's."""
    if model.runtime is not None:
        return model.runtime.sliding_windows(inputs.shape[2:])
    return SlidingWindows.plan(inputs.shape[2:], model.spec.input.patch_size, model.spec.input.overlap)


def uses_sliding_window(model: LoadedModel, inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` is predicted window by window (a segmentation grid larger than the patch size, or a
    framework that always predicts in windows, as nnU-Net pads a small grid to one)."""
    if model.runtime is not None:
        return True
    patch = model.spec.input.patch_size
    return model.spec.task == "segmentation" and bool(patch) and any(s > p for s, p in zip(inputs.shape[2:], patch))


def predict_logits(model: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
    """Network output for a batch on the model grid; sliding windows when it exceeds the patch size."""
    if model.runtime is not None:
        return model.runtime.predict_logits(model.network, inputs)
    if uses_sliding_window(model, inputs):
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(inputs, roi_size=model.spec.input.patch_size, sw_batch_size=2,
                                        predictor=model.network, overlap=model.spec.input.overlap, mode="gaussian")
    return model.network(inputs)


def predict_probabilities(model: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[B, K(, *spatial)]`` (softmax, or sigmoid turned into two classes)."""
    return probabilities_from_logits(model, predict_logits(model, inputs))


def probabilities_from_logits(model: LoadedModel, logits: torch.Tensor) -> torch.Tensor:
    """The model card's output activation applied to ``logits``."""
    if model.spec.output_activation == "sigmoid" and logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1)
    if model.spec.output_activation == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def explain_image(
    image: sitk.Image,
    model: LoadedModel,
    method: str = "gradcam",
    target: Optional[int | str] = None,
    target_mask: Optional[sitk.Image] = None,
    uncertainty: str = "none",
    samples: int = 8,
    ensemble: Sequence[LoadedModel] = (),
    method_params: Optional[dict[str, Any]] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    cache: Optional[CaseCache] = None,
    other_channels: Sequence[sitk.Image] = (),
    target_point_ras: Optional[Sequence[float]] = None,
) -> ExplanationResult:
    """Predict, explain and (optionally) estimate uncertainty for one case.

    ``target``: a class index or name (default: the predicted class for classifiers, the positive
    class for segmentation). ``target_mask``: for segmentation, the region whose logits are explained
    (default: the predicted region). ``uncertainty``: ``none``, ``mc-dropout``, ``tta`` or
    ``ensemble`` (with ``ensemble`` the other models). Same ``seed``, same result. ``cache``: the open
    case's cache; what it already knows is reused (and listed in ``reused``). ``other_channels``: for a
    multi-channel model, its inputs after ``image``, in the card's channel order (``image`` sets the grid
    of every map). ``target_point_ras``: for segmentation without ``target``, explain the structure predicted
    at this point (RAS mm: the viewer's cursor) when there is one there.
    """
    if method not in EXPLAINERS:
        raise XAIInputError(f"Unknown explanation method '{method}'; choose one of {', '.join(EXPLAINERS)}.")
    if uncertainty not in UNCERTAINTY_METHODS:
        raise XAIInputError(f"Unknown uncertainty method '{uncertainty}'; choose one of {', '.join(UNCERTAINTY_METHODS)}.")
    if uncertainty == "ensemble" and not ensemble:
        raise XAIInputError("Ensemble uncertainty needs at least one more model (--ensemble-model).")
    if other_channels and ensemble:
        raise XAIInputError("Ensemble uncertainty takes single-volume models; this run has several input volumes.")
    if samples < 2 and uncertainty in ("mc-dropout", "tta"):
        raise XAIInputError("Uncertainty needs at least 2 samples.")
    for other in ensemble:
        if other.spec.task != model.spec.task or other.spec.class_names != model.spec.class_names:
            raise XAIModelError(f"Ensemble member {other.model_id} does not have the same task and classes as {model.model_id}.")

    stage = Stage(progress, cancel)
    timings: dict[str, float] = {}
    reused: list[str] = []
    torch.manual_seed(seed)
    # The cache knows a case by its first volume only: a multi-channel case is never reused.
    entry = cache.case(image, model) if cache is not None and not other_channels else None
    if entry is not None and entry.prepared is not None:
        case, probabilities, prediction, segmentation = entry.prepared, entry.probabilities, entry.prediction, entry.segmentation
        cache.hits["forward"] += 1
        reused.append("forward")
    else:
        with torch.no_grad():
            clock = time.perf_counter()
            stage.report(0.0, "preparing the image")
            case = prepare_case(image, model, other_channels)
            timings["preprocess"] = time.perf_counter() - clock

        clock = time.perf_counter()
        stage.report(0.02, "running the model")
        recording = _cam_recording(entry, model, method, case.inputs)
        if recording is not None:
            # One forward pass serves the prediction and, kept with its graph, every Grad-CAM of the case.
            probabilities = probabilities_from_logits(model, recording.output.detach())
        else:
            with torch.no_grad():
                probabilities = predict_probabilities(model, case.inputs)
        prediction, segmentation = describe_prediction(model, case, probabilities)
        timings["predict"] = time.perf_counter() - clock
        if entry is not None:
            entry.prepared, entry.probabilities, entry.prediction, entry.segmentation = case, probabilities, prediction, segmentation

    resolved = resolve_target(model, case, probabilities, target, target_mask, target_point_ras)
    explain_share = 0.85 if uncertainty == "none" else 0.5
    clock = time.perf_counter()
    explainer = make_explainer(method, model.network, model.spec.cam_target_layer, **explainer_params(method, seed, method_params))
    key = map_key(method, explainer.parameters(), resolved.class_index, resolved.region, seed)
    windowing: Optional[dict] = None
    if entry is not None and key in entry.maps:
        attribution = entry.maps[key]
        cache.hits["map"] += 1
        reused.append("map")
    else:
        recording = _cam_recording(entry, model, method, case.inputs)
        if recording is not None:
            explainer.recording = recording
        attribution, windowing = attribute_case(model, explainer, case.inputs, resolved, stage.sub(0.05, explain_share))
        attribution = attribution[0, 0]
        if entry is not None:
            cache.remember_map(entry, key, attribution)
    saliency = case.to_input_grid(attribution)
    timings["explain"] = time.perf_counter() - clock
    explanation = {
        "method": method,
        "method_name": explainer.title,
        "reference": explainer.reference,
        "parameters": explainer.parameters(),
        "value_meaning": explainer.value_meaning(),
        "target": {"class_index": resolved.class_index, "class_name": resolved.class_name,
                   "description": resolved.description, "region_voxels": resolved.region_voxels},
        "statistics": map_statistics(saliency),
    }
    if windowing is not None:
        explanation["sliding_windows"] = windowing
    shares = channel_evidence(model, case.inputs, resolved)
    if shares is not None:
        explanation["channel_evidence"] = shares

    uncertainty_map, uncertainty_info = None, {"method": "none"}
    if uncertainty != "none":
        clock = time.perf_counter()
        spread_of = method if method in _SINGLE_PASS_METHODS else None  # what the classifier's map spread is of
        uncertainty_key = (uncertainty, samples, seed, spread_of, key[2:4], tuple(m.sha256 for m in ensemble))
        if entry is not None and uncertainty_key in entry.uncertainty:
            uncertainty_map, uncertainty_info = entry.uncertainty[uncertainty_key]
            cache.hits["uncertainty"] += 1
            reused.append("uncertainty")
        else:
            uncertainty_map, uncertainty_info = _estimate_uncertainty(
                model, case, method, resolved, uncertainty, samples, ensemble, image, seed, stage.sub(explain_share, 0.98)
            )
            if entry is not None:
                entry.uncertainty[uncertainty_key] = (uncertainty_map, uncertainty_info)
        timings["uncertainty"] = time.perf_counter() - clock
    stage.report(1.0, "done")
    return ExplanationResult(
        saliency=saliency,
        prediction=prediction,
        explanation=explanation,
        provenance=build_provenance(model, method, explainer.parameters(), resolved, uncertainty, samples, ensemble, seed, image),
        uncertainty=uncertainty_map,
        uncertainty_info=uncertainty_info,
        segmentation=segmentation,
        applicability=assess_applicability(image, model.spec.domain),
        timings_s=timings,
        reused=tuple(reused),
    )


def _cam_recording(entry: Optional[CachedCase], model: LoadedModel, method: str,
                   inputs: torch.Tensor) -> Optional[LayerRecording]:
    """The case cache's forward pass kept with the CAM layer's activations (made on first use), or None
    where none is kept: no cache, not a CAM method, no CAM layer, TorchScript, sliding windows, or a
    grid too large to keep the graph of."""
    if entry is None or method not in _CAM_METHODS:
        return None
    if (not model.spec.cam_target_layer or model.is_torchscript or uses_sliding_window(model, inputs)
            or inputs.shape[0] * inputs[0, 0].numel() > MAX_RECORDED_VOXELS):
        return None
    if entry.recording is None:
        entry.recording = LayerRecording(model.network, model.spec.cam_target_layer, inputs)
    return entry.recording


def map_statistics(image: sitk.Image) -> dict:
    """Range and peak of a map: where the strongest evidence is (RAS mm and voxel index)."""
    array = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    k, j, i = np.unravel_index(int(np.argmax(array)), array.shape)
    lps = image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    return {
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean()),
        "peak_ijk": [int(i), int(j), int(k)],
        "peak_ras_mm": [-lps[0], -lps[1], lps[2]],
    }


def describe_prediction(model: LoadedModel, case: PreparedCase, probabilities: torch.Tensor) -> tuple[dict, Optional[sitk.Image]]:
    """The prediction as JSON values (and, for segmentation, the label map on the input grid)."""
    names = model.spec.class_names
    if model.spec.task == "classification":
        p = probabilities[0]
        predicted = int(p.argmax())
        return {
            "task": "classification",
            "class_names": list(names),
            "probabilities": {name: float(v) for name, v in zip(names, p)},
            "predicted_class": predicted,
            "predicted_label": names[predicted],
            "confidence": float(p[predicted]),
        }, None
    if is_multilabel(model, probabilities):
        return _describe_structures(model, case, probabilities)
    # Segmentation: probabilities back on the input grid, then the label map there (argmax), so the
    # label map is as sharp as the input allows, not blocky at the model's spacing.
    on_input = case.probabilities_to_input_grid(probabilities[0])
    labels = on_input.argmax(axis=0).astype(np.uint8)
    segmentation = sitk.GetImageFromArray(labels)
    segmentation.CopyInformation(case.image)
    voxel_ml = float(np.prod(case.image.GetSpacing())) / 1000.0
    volumes = {name: float((labels == c).sum() * voxel_ml) for c, name in enumerate(names)}
    foreground = labels > 0
    mean_probabilities = probabilities[0].reshape(probabilities.shape[1], -1).mean(dim=1)
    # The structure named as predicted is the one explained by default: one rule for both (model-grid voxels).
    predicted = largest_predicted_structure(probabilities, multilabel=False) if foreground.any() else 0
    confidence = float(on_input.max(axis=0)[foreground].mean()) if foreground.any() else float(on_input[0].mean())
    return {
        "task": "segmentation",
        "class_names": list(names),
        "probabilities": {name: float(v) for name, v in zip(names, mean_probabilities)},
        "predicted_class": predicted,
        "predicted_label": names[predicted],
        "confidence": confidence,
        "volumes_ml": volumes,
        "found": bool(foreground.any()),
    }, segmentation


def _describe_structures(model: LoadedModel, case: PreparedCase, probabilities: torch.Tensor) -> tuple[dict, sitk.Image]:
    """A multi-label prediction (one sigmoid channel per structure; structures may overlap, as BraTS' tumour
    core inside the whole tumour): each structure's own volume, and a label map in which a voxel carries the
    most probable of the structures present there (value = channel + 1; 0: none)."""
    names = model.spec.class_names
    on_input = case.probabilities_to_input_grid(probabilities[0], background=False)
    present = on_input > 0.5
    labels = np.where(present.any(axis=0), on_input.argmax(axis=0) + 1, 0).astype(np.uint8)
    segmentation = sitk.GetImageFromArray(labels)
    segmentation.CopyInformation(case.image)
    voxel_ml = float(np.prod(case.image.GetSpacing())) / 1000.0
    volumes = {name: float(present[c].sum() * voxel_ml) for c, name in enumerate(names)}
    predicted = largest_predicted_structure(probabilities, multilabel=True)  # the default target's rule
    found = bool(present.any())
    confidence = float(on_input[predicted][present[predicted]].mean()) if present[predicted].any() else \
        float(1.0 - on_input.max(axis=0).mean())
    mean_probabilities = probabilities[0].reshape(probabilities.shape[1], -1).mean(dim=1)
    return {
        "task": "segmentation",
        "multilabel": True,
        "class_names": list(names),
        "label_names": ["", *names],  # label value -> structure (0: none)
        "probabilities": {name: float(v) for name, v in zip(names, mean_probabilities)},
        "predicted_class": predicted,
        "predicted_label": names[predicted],
        "confidence": confidence,
        "volumes_ml": volumes,
        "found": found,
    }, segmentation


def resolve_target(model: LoadedModel, case: PreparedCase, probabilities: torch.Tensor,
                   target: Optional[int | str], target_mask: Optional[sitk.Image],
                   point_ras: Optional[Sequence[float]] = None) -> Target:
    """The score to explain, fixed from the unperturbed prediction (see :mod:`XAIExplainLib.targets`);
    segmentation without a ``target``: the structure predicted at ``point_ras`` if any, else the largest."""
    spec = model.spec
    if spec.task == "classification":
        if target_mask is not None:
            raise XAIInputError("A target mask only applies to segmentation models; this model is a classifier.")
        index = spec.class_index(target) if target is not None else int(probabilities[0].argmax())
        description = f"logit of class '{spec.class_names[index]}'" + (" (predicted)" if target is None else "")
        return Target(class_logit(index), index, spec.class_names[index], description)
    multilabel = is_multilabel(model, probabilities)
    at_point = structure_at(case, probabilities, point_ras, multilabel) if target is None and point_ras else None
    default = spec.positive_class if spec.positive_class is not None else largest_predicted_structure(probabilities,
                                                                                                     multilabel)
    index = spec.class_index(target) if target is not None else (at_point if at_point is not None else default)
    if target_mask is not None:
        mask_on_grid = sitk.Resample(sitk.Cast(target_mask, sitk.sitkFloat32), case.grid, sitk.Transform(),
                                     sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
        region = torch.from_numpy(sitk.GetArrayFromImage(mask_on_grid).transpose(2, 1, 0) > 0.5)
        if not region.any():
            raise XAIInputError("The target mask has no voxels inside the model's field of view.")
        description = f"'{spec.class_names[index]}' logits summed over the given mask"
    else:
        region = probabilities[0, index] > 0.5 if multilabel else probabilities[0].argmax(dim=0) == index
        description = f"'{spec.class_names[index]}' logits summed over the predicted region" + \
            (" (the structure at the cursor)" if at_point is not None else "")
        if not region.any():
            # Nothing predicted: explain what pushes the whole volume towards the class instead.
            region = torch.ones_like(region)
            description = f"'{spec.class_names[index]}' logits summed over the whole volume (none predicted)"
    return Target(region_logit_sum(index, region), index, spec.class_names[index], description, int(region.sum()), region)


def structure_at(case: PreparedCase, probabilities: torch.Tensor, point_ras: Sequence[float],
                 multilabel: bool) -> Optional[int]:
    """The structure predicted at ``point_ras`` (RAS mm) on the model grid (multi-label: the most probable of
    those present there); None outside the grid or where nothing (only background) is predicted."""
    r, a, s = (float(v) for v in point_ras)
    index = case.grid.TransformPhysicalPointToContinuousIndex((-r, -a, s))
    voxel = tuple(int(round(v)) for v in index)
    if any(v < 0 or v >= n for v, n in zip(voxel, probabilities.shape[2:])):
        return None
    values = probabilities[(0, slice(None), *voxel)]
    if multilabel:
        return int(values.argmax()) if bool((values > 0.5).any()) else None
    label = int(values.argmax())
    return label if label > 0 else None


def is_multilabel(model: LoadedModel, probabilities: torch.Tensor) -> bool:
    """Whether each output channel is a structure of its own (sigmoid over several channels, as BraTS'
    tumour core / whole tumour / enhancing tumour): structures may overlap and none is background."""
    return model.spec.output_activation == "sigmoid" and probabilities.shape[1] == len(model.spec.class_names) > 1


def largest_predicted_structure(probabilities: torch.Tensor, multilabel: bool) -> int:
    """The structure predicted over the most voxels (channel 0 is background unless ``multilabel``); the first
    structure when none is predicted."""
    first = 0 if multilabel or probabilities.shape[1] == 1 else 1
    if multilabel:
        counts = (probabilities[0] > 0.5).flatten(1).sum(dim=1)
    else:
        counts = torch.bincount(probabilities[0].argmax(dim=0).flatten(), minlength=probabilities.shape[1])
    structures = range(first, probabilities.shape[1])
    best = max(structures, key=lambda c: int(counts[c]))
    return best if int(counts[best]) > 0 else first


def explainer_params(method: str, seed: int, overrides: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Constructor parameters of ``method``'s explainer: the run's seed where the method is random, then ``overrides``."""
    params: dict[str, Any] = {"seed": seed} if method == "smoothgrad" else {}
    params.update(overrides or {})
    return params


def _estimate_uncertainty(model: LoadedModel, case: PreparedCase, method: str, target: Target, kind: str,
                          n_samples: int, ensemble: Sequence[LoadedModel], image: sitk.Image, seed: int,
                          stage: Stage) -> tuple[sitk.Image, dict]:
    if kind == "ensemble":
        return _ensemble_uncertainty(model, ensemble, image, method, target, seed, stage)
    samples = sample_probabilities(lambda x: predict_probabilities(model, x), case.inputs, kind, model.network,
                                   n_samples, seed, stage=stage.sub(0.0, 0.5))
    info: dict[str, Any] = {"method": kind, "samples": n_samples}
    if model.spec.task == "segmentation":
        entropy_map = entropy(samples.mean(dim=0, keepdim=True))[0]
        information = mutual_information(samples)
        uncertainty_map = case.to_input_grid(entropy_map)
        info.update(
            map="predictive entropy (nats) of the mean of the samples, per voxel",
            max_entropy=float(np.log(samples.shape[1])),
            mean_mutual_information=float(information.mean()),
            statistics=map_statistics(uncertainty_map),
            structures=structure_uncertainty(model, case, samples, entropy_map),
        )
        stage.report(1.0, "uncertainty done")
        return uncertainty_map, info
    info.update(classification_summary(samples, model.spec.class_names))
    spread, spread_method = _explanation_spread(model, case, method, target, kind, n_samples, seed, stage.sub(0.5, 1.0))
    uncertainty_map = case.to_input_grid(spread)
    info.update(map=f"standard deviation of the {spread_method} map across the {n_samples} samples, per voxel",
                statistics=map_statistics(uncertainty_map))
    return uncertainty_map, info


def predicted_structures(result: "ExplanationResult") -> list[tuple[str, str]]:
    """``(name, title)`` of the structures a segmentation result predicts, largest first, the explained one
    always among them; the title gives the volume (and its spread across uncertainty samples). Empty for
    classifiers and for results with one structure: there is nothing to pick."""
    prediction = result.prediction
    if prediction.get("task") != "segmentation":
        return []
    spread = result.uncertainty_info.get("structures", {})
    found = sorted(((name, volume) for name, volume in prediction["volumes_ml"].items()
                    if volume > 0 and (prediction.get("multilabel") or name != prediction["class_names"][0])),
                   key=lambda item: -item[1])
    explained = result.explanation.get("target", {}).get("class_name")
    if explained and explained not in [name for name, _ in found]:
        found.append((explained, prediction["volumes_ml"].get(explained, 0.0)))
    if len(found) < 2:
        return []

    def title(name: str, volume: float) -> str:
        if name in spread:
            return f"{name} ({spread[name]['volume_ml_mean']:.1f} ± {spread[name]['volume_ml_std']:.1f} ml)"
        return f"{name} ({volume:.1f} ml)"

    return [(name, title(name, volume)) for name, volume in found]


def structure_uncertainty(model: LoadedModel, case: PreparedCase, samples: torch.Tensor,
                          entropy_map: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per predicted structure: its volume in each sample (mean and spread, ml on the model grid) and the mean
    predictive entropy over the voxels the samples' mean assigns to it. ``samples``: ``[S, K, *grid]``."""
    multilabel = is_multilabel(model, samples)
    mean = samples.mean(dim=0)
    # Labels, not one-hot maps: a 105-structure model on a CT grid would not fit one-hot.
    labels, mean_labels = (None, None) if multilabel else (samples.argmax(dim=1).short(), mean.argmax(dim=0).short())
    voxel_ml = float(np.prod(case.grid.GetSpacing())) / 1000.0
    structures = {}
    for index, name in enumerate(model.spec.class_names):
        if not multilabel and index == 0:
            continue  # background
        members = samples[:, index] > 0.5 if multilabel else labels == index
        region = mean[index] > 0.5 if multilabel else mean_labels == index
        volumes = members.flatten(1).sum(dim=1).double() * voxel_ml
        if not bool(region.any()) and float(volumes.max()) == 0.0:
            continue
        structures[name] = {"volume_ml_mean": float(volumes.mean()), "volume_ml_std": float(volumes.std()),
                            "mean_entropy": float(entropy_map[region].mean()) if bool(region.any()) else 0.0}
    return structures


def _single_pass_explainer(model: LoadedModel, method: str):
    """``method`` when one pass computes it, else Grad-CAM (or the gradient when the model has no CAM layer)."""
    if method not in _SINGLE_PASS_METHODS:
        method = "gradcam" if model.spec.cam_target_layer and not model.is_torchscript else "gradient"
    return make_explainer(method, model.network, model.spec.cam_target_layer)


def _explanation_spread(model: LoadedModel, case: PreparedCase, method: str, target: Target, kind: str,
                        n_samples: int, seed: int, stage: Stage) -> tuple[torch.Tensor, str]:
    """Per-voxel standard deviation of a single-pass explanation over stochastic samples."""
    explainer = _single_pass_explainer(model, method)
    if kind == "mc-dropout":
        torch.manual_seed(seed)
        with mc_dropout(model.network):
            maps = explainer.attribute(case.inputs.expand(n_samples, *case.inputs.shape[1:]), target.fn, stage)
    else:
        maps = []
        for i, augmentation in enumerate(tta_augmentations(n_samples, case.inputs.dim() - 2, seed)):
            maps.append(augmentation.invert_spatial(explainer.attribute(augmentation.apply(case.inputs), target.fn)))
            stage.report((i + 1) / n_samples, f"explanation under augmentation {i + 1}/{n_samples}")
        maps = torch.cat(maps)
    return maps[:, 0].std(dim=0), explainer.title


def _ensemble_uncertainty(model: LoadedModel, ensemble: Sequence[LoadedModel], image: sitk.Image, method: str,
                          target: Target, seed: int, stage: Stage) -> tuple[sitk.Image, dict]:
    """Disagreement between models, computed on the input grid (each model has its own grid)."""
    members = [model, *ensemble]
    info: dict[str, Any] = {"method": "ensemble", "members": [m.model_id for m in members]}
    probability_maps, class_probabilities, saliencies = [], [], []
    for i, member in enumerate(members):
        case = prepare_case(image, member)
        with torch.no_grad():
            probabilities = predict_probabilities(member, case.inputs)
        if member.spec.task == "segmentation":
            probability_maps.append(case.probabilities_to_input_grid(probabilities[0]))
        else:
            class_probabilities.append(probabilities[0])
            explainer = _single_pass_explainer(member, method)
            saliency = explainer.attribute(case.inputs, class_logit(target.class_index))[0, 0]
            saliencies.append(sitk.GetArrayFromImage(case.to_input_grid(saliency)))
        stage.report((i + 1) / len(members), f"ensemble member {i + 1}/{len(members)}")
    if probability_maps:
        stacked = torch.from_numpy(np.stack(probability_maps))
        array = entropy(stacked.mean(dim=0, keepdim=True))[0].numpy()
        info.update(map="predictive entropy (nats) of the ensemble mean, per voxel",
                    mean_mutual_information=float(mutual_information(stacked).mean()))
    else:
        info.update(classification_summary(torch.stack(class_probabilities), model.spec.class_names))
        array = np.std(np.stack(saliencies), axis=0)
        info.update(map="standard deviation of the members' explanation maps, per voxel")
    uncertainty_map = sitk.GetImageFromArray(array.astype(np.float32))
    uncertainty_map.CopyInformation(image)
    info["statistics"] = map_statistics(uncertainty_map)
    return uncertainty_map, info


def build_provenance(model: LoadedModel, method: str, parameters: dict, target: Target, uncertainty: str,
                     samples: int, ensemble: Sequence[LoadedModel], seed: int, image: sitk.Image) -> dict:
    """Where a map came from: model id and hash, method, parameters, target, seed, versions, time, grid."""
    import captum
    import monai

    return {
        "software": f"slicer-xai {__version__}",
        "libraries": {"torch": torch.__version__, "monai": monai.__version__, "captum": captum.__version__,
                      "SimpleITK": sitk.Version_VersionString(), "python": platform.python_version()},
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model.describe(),
        "ensemble": [m.describe() for m in ensemble],
        "method": method,
        "parameters": parameters,
        "target": {"class_index": target.class_index, "class_name": target.class_name, "description": target.description},
        "uncertainty": {"method": uncertainty, "samples": samples if uncertainty in ("mc-dropout", "tta") else None},
        "seed": seed,
        "input_geometry": describe_geometry(image),
        "preprocessing": model.describe_preprocessing(),
    }
