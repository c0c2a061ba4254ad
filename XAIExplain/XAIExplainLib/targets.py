"""What an explanation explains: a scalar score per sample, computed from the model's output.

Explainers take a *target function* ``output -> score[B]`` instead of a class index, so the same
Grad-CAM or occlusion code serves classifiers (a class logit) and segmentation networks (a class's
logits summed over a region). The region is fixed once, from the unperturbed prediction or a given
mask, so that perturbed or interpolated inputs are all scored on the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["TargetFn", "Target", "class_logit", "region_logit_sum"]

TargetFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Target:
    """A resolved target: the score function and how it was chosen (for provenance)."""

    fn: TargetFn
    class_index: int
    class_name: str
    description: str
    region_voxels: Optional[int] = None
    region: Optional[torch.Tensor] = None  # segmentation: the voxels whose logits are summed


def class_logit(class_index: int) -> TargetFn:
    """Score of a classifier: the logit of ``class_index`` (``output`` is ``[B, K]``)."""

    def score(output: torch.Tensor) -> torch.Tensor:
        return output[:, class_index]

    return score


def region_logit_sum(class_index: int, region: torch.Tensor) -> TargetFn:
    """Score of a segmentation network: the logits of ``class_index`` summed over ``region``.

    ``output`` is ``[B, K, *spatial]``; ``region`` is a ``[*spatial]`` 0/1 tensor, fixed in advance.
    """
    weights = region.to(torch.float32)

    def score(output: torch.Tensor) -> torch.Tensor:
        b = output.shape[0]
        return (output[:, class_index] * weights).reshape(b, -1).sum(dim=1)

    def change_in_box(new: torch.Tensor, old: torch.Tensor, box: tuple[slice, ...]) -> float:
        """How much the score moves when the output's ``box`` changes from ``old`` to ``new`` (``[K, *box]``)."""
        return float(((new[class_index] - old[class_index]) * weights[box]).sum())

    score.region = region != 0  # what the score reads: occlusion recomputes only what can reach it
    score.change_in_box = change_in_box  # occlusion reads a window's change without rebuilding whole outputs
    return score
