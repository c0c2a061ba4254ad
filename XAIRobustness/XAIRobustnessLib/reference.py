"""The unperturbed case every robustness test compares against, and the batched model runs they share.

A test (sweep, sanity check, faithfulness) starts from the same reference: the input prepared on the
model grid (:func:`XAIExplainLib.pipeline.prepare_case`), the model's prediction, the *target* that is
explained — fixed once from the unperturbed prediction, so every perturbed or randomised run explains
the same class / region — the explanation itself, and the anatomy mask maps are compared inside.
Everything here works on the model grid; maps go back to the input grid only when shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.explainers import EXPLAINERS, Explainer, make_explainer
from XAIExplainLib.explainers.budget import batch_size_for
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.pipeline import (PreparedCase, attribute_case, explainer_params, predict_probabilities, prepare_case,
                                   resolve_target, uses_sliding_window)
from XAIExplainLib.preprocessing import to_model_grid
from XAIExplainLib.progress import Stage
from XAIExplainLib.targets import Target

from .perturbations import ImageStats, image_stats

__all__ = ["Reference", "explain_reference", "target_probability", "normalised_entropy",
           "run_batched"]


@dataclass
class Reference:
    """The unperturbed case through the model and the explainer, on the model grid."""

    image: sitk.Image
    stats: ImageStats  # intensity landmarks of the input image (perturbations reuse them)
    case: PreparedCase
    probabilities: torch.Tensor  # [K] or [K, *spatial]
    target: Target
    explainer: Explainer
    method: str
    saliency: torch.Tensor  # [*spatial]
    anatomy: torch.Tensor  # bool [*spatial]: where maps are compared and voxels deleted / inserted
    chunk: int  # cases per batched forward / backward pass
    #: A multi-channel model's other input volumes (card order) and their intensity landmarks.
    others: tuple[sitk.Image, ...] = ()
    other_stats: tuple[ImageStats, ...] = ()

    def perturbed_inputs(self, model: LoadedModel, perturbation, severity: float, seed: int) -> torch.Tensor:
        """The network input of the case perturbed at ``severity``: the same perturbation, with the same draw,
        applied to every input volume of a multi-channel model."""
        image = perturbation(self.image, severity, seed, self.stats)
        others = [perturbation(other, severity, seed, stats) for other, stats in zip(self.others, self.other_stats)]
        return prepare_case(image, model, others).inputs

    @property
    def is_segmentation(self) -> bool:
        return self.probabilities.dim() > 1

    def predicted_mask(self) -> Optional[torch.Tensor]:
        return self.probabilities.argmax(dim=0) if self.is_segmentation else None


def explain_reference(image: sitk.Image, model: LoadedModel, method: str = "gradcam", seed: int = 0,
                      method_params: Optional[dict[str, Any]] = None, memory_budget_mb: float = 2048,
                      stage: Optional[Stage] = None, target: Optional[int | str] = None,
                      other_channels: Sequence[sitk.Image] = ()) -> Reference:
    """Prepare, predict and explain the unperturbed ``image`` (same seed, same result); ``target`` and
    ``other_channels`` as in :func:`~XAIExplainLib.pipeline.explain_image` (default: the predicted class)."""
    if method not in EXPLAINERS:
        raise XAIInputError(f"Unknown explanation method '{method}'; choose one of {', '.join(EXPLAINERS)}.")
    if memory_budget_mb <= 0:
        raise XAIInputError("The memory budget must be positive.")
    stage = stage or Stage(None, None)
    torch.manual_seed(seed)
    stage.report(0.0, "preparing the image")
    case = prepare_case(image, model, other_channels)
    chunk = batch_size_for(model.network, case.inputs, memory_budget_mb)
    with torch.no_grad():
        probabilities = predict_probabilities(model, case.inputs)
    resolved = resolve_target(model, case, probabilities, target, None)
    params = {"internal_batch_size": chunk, **explainer_params(method, seed, method_params)}
    explainer = make_explainer(method, model.network, model.spec.cam_target_layer, **params)
    stage.report(0.3, "explaining the unperturbed case")
    saliency = explain_inputs(model, explainer, case.inputs, resolved, stage.sub(0.3, 1.0))[0]
    stats, *other_stats = [image_stats(sitk.GetArrayFromImage(sitk.Cast(volume, sitk.sitkFloat32)))
                           for volume in (image, *other_channels)]
    return Reference(image=image, stats=stats, case=case, probabilities=probabilities[0], target=resolved,
                     explainer=explainer, method=method, saliency=saliency.detach(),
                     anatomy=_anatomy_on_grid(image, stats, case.grid), chunk=chunk, others=tuple(other_channels),
                     other_stats=tuple(other_stats))


def _anatomy_on_grid(image: sitk.Image, stats: ImageStats, grid: sitk.Image) -> torch.Tensor:
    """The image's foreground (see :func:`~.perturbations.image_stats`) on the model grid."""
    foreground = sitk.GetImageFromArray(stats.foreground.astype(np.float32))
    foreground.CopyInformation(image)
    mask = torch.from_numpy(to_model_grid(foreground, grid) > 0.5)
    return mask if mask.any() else torch.ones_like(mask)


def run_batched(model: LoadedModel, reference: Reference, inputs: torch.Tensor,
                explain: bool = True, explainer: Optional[Explainer] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Probabilities ``[B, K(, *spatial)]`` and (if ``explain``) maps ``[B, *spatial]`` for a batch."""
    with torch.no_grad():
        probabilities = predict_probabilities(model, inputs)
    if not explain:
        return probabilities, None
    maps = explain_inputs(model, explainer or reference.explainer, inputs, reference.target)
    return probabilities, maps.detach()


def explain_inputs(model: LoadedModel, explainer: Explainer, inputs: torch.Tensor, target: Target,
                   stage: Optional[Stage] = None) -> torch.Tensor:
    """Maps ``[B, *spatial]`` of a batch: in one call, or case by case and window by window for a model
    predicted in sliding windows (:func:`XAIExplainLib.pipeline.attribute_case`)."""
    if not uses_sliding_window(model, inputs):
        return explainer.attribute(inputs, target.fn, stage)[:, 0]
    return torch.cat([attribute_case(model, explainer, inputs[i:i + 1], target, stage)[0][:, 0]
                      for i in range(inputs.shape[0])])


def target_probability(reference: Reference, probabilities: torch.Tensor) -> torch.Tensor:
    """Per case ``[B]``: the explained class's probability (segmentation: its mean over the explained region)."""
    index = reference.target.class_index
    if probabilities.dim() == 2:
        return probabilities[:, index]
    region = reference.probabilities.argmax(dim=0) == index
    if not region.any():
        region = torch.ones_like(region)
    return probabilities[:, index][:, region].mean(dim=1)


def normalised_entropy(probabilities: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Predictive entropy / log K per case ``[B]`` (0 = certain, 1 = uniform); mean over ``region`` for maps."""
    k = probabilities.shape[1]
    entropy = -(probabilities * probabilities.clamp(min=1e-12).log()).sum(dim=1) / math.log(max(k, 2))
    if entropy.dim() == 1:
        return entropy
    if region is None or not region.any():
        return entropy.reshape(entropy.shape[0], -1).mean(dim=1)
    return entropy[:, region].mean(dim=1)
