"""Explanations of a segmentation network that is run window by window, inside a memory budget.

A model predicted with sliding windows (MONAI's ``sliding_window_inference``, as published bundles'
inferers run it) gives each voxel the importance-weighted mean of the windows that cover it,
``L(v) = sum_w g_w(v) f(x_w)(v) / G(v)`` with ``G = sum_w g_w``. A region target
``T = sum_v R(v) L_c(v)`` is therefore exactly a sum of per-window scores
``T_w = sum_v omega_w(v) f(x_w)_c(v)``, ``omega_w = R g_w / G``, each of which reads one window; windows
that do not meet the region have ``omega_w = 0`` and are never run. Explaining the whole grid in one pass
instead keeps every layer's activations of the whole grid alive (a SwinUNETR on a 160x160x64 CT: 10 GB),
and is not the function the model computes (its receptive field and normalisation see other context).

- Gradient family (gradient, SmoothGrad, Integrated Gradients): the explainer runs unchanged on the whole
  input through :class:`WindowedScore`, whose forward pass is ``sum_w T_w`` with each window under
  activation checkpointing (only one window's activations are alive, recomputed in the backward pass). The
  map is the method's map of the sliding-window model itself, to floating-point rounding.
- Occlusion: each needed window is explained on its own with its share ``T_w`` (its windows are scored
  by incremental inference inside the window) and the drops are added: the drop of ``T`` is the sum of the
  drops of the ``T_w`` whose window the occluded patch meets. Patches are laid out per window, so where a
  patch straddles two windows it is hidden in each separately.
- Grad-CAM / Grad-CAM++: one map per window from that window's activations and its share of the score,
  added on the grid, then scaled to 0..1 as a whole.

Batches (SmoothGrad's copies, Integrated Gradients' steps) are sized by the memory budget measured on one
window, which is what is alive at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..progress import Stage
from ..targets import TargetFn, region_logit_sum
from .base import Explainer
from .budget import batch_size_for
from .cam import _CAMBase, scale_to_unit
from .occlusion import Occlusion

__all__ = ["SlidingWindows", "WindowedScore", "attribute_by_windows", "windowed_score"]


@dataclass(frozen=True)
class SlidingWindows:
    """The windows MONAI's ``sliding_window_inference`` runs on a grid, with its Gaussian blending weights.

    ``boxes`` are on the grid padded to at least one patch along each axis (as MONAI pads, with zeros,
    split evenly between both ends); ``pad`` is that padding in ``torch.nn.functional.pad`` order.
    """

    spatial: tuple[int, ...]
    patch: tuple[int, ...]
    pad: tuple[int, ...]
    boxes: tuple[tuple[slice, ...], ...]
    importance: torch.Tensor  # [*patch]
    coverage: torch.Tensor  # [*padded]: the sum of every window's importance

    @classmethod
    def plan(cls, spatial: Sequence[int], patch: Sequence[int], overlap: float) -> "SlidingWindows":
        from monai.data.utils import compute_importance_map, dense_patch_slices

        spatial, patch = tuple(int(s) for s in spatial), tuple(int(p) for p in patch)
        padded = tuple(max(s, p) for s, p in zip(spatial, patch))
        # MONAI's scan interval: a window's size times (1 - overlap), at least 1; the whole axis if it is one window.
        interval = tuple(p if p == s else max(int(p * (1 - overlap)), 1) for s, p in zip(padded, patch))
        boxes = tuple(tuple(box) for box in dense_patch_slices(padded, patch, interval))
        importance = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125, dtype=torch.float32)
        return cls.from_boxes(spatial, patch, boxes, importance)

    @classmethod
    def from_boxes(cls, spatial: Sequence[int], patch: Sequence[int], boxes: Sequence[tuple[slice, ...]],
                   importance: torch.Tensor) -> "SlidingWindows":
        """Another engine's windows (nnU-Net's) on the grid padded as MONAI pads it, with its blending weights."""
        spatial, patch = tuple(int(s) for s in spatial), tuple(int(p) for p in patch)
        pad: list[int] = []
        for size, window in reversed(list(zip(spatial, patch))):
            missing = max(window - size, 0)
            pad.extend([missing // 2, missing - missing // 2])
        coverage = torch.zeros(tuple(max(s, p) for s, p in zip(spatial, patch)))
        for box in boxes:
            coverage[box] += importance
        return cls(spatial, patch, tuple(pad), tuple(tuple(b) for b in boxes), importance, coverage)

    def pad_input(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.pad(inputs, self.pad) if any(self.pad) else inputs

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        """``padded`` ``[..., *padded grid]`` back on the grid."""
        starts = self.pad[-2::-2]  # F.pad lists the last axis first
        return padded[(..., *(slice(s, s + n) for s, n in zip(starts, self.spatial)))]

    def shares(self, weights: torch.Tensor) -> list[tuple[tuple[slice, ...], torch.Tensor]]:
        """Each window that meets ``weights`` ``[*spatial]`` with its share of them, ``weights * g_w / G`` ``[*patch]``."""
        padded = self.pad_input(weights[None, None].to(torch.float32))[0, 0]
        parts = []
        for box in self.boxes:
            local = padded[box]
            if bool(local.any()):
                parts.append((box, local * self.importance / self.coverage[box]))
        return parts


class WindowedScore(torch.nn.Module):
    """``inputs [B, C, *spatial] -> scores [B]``: the region score of the sliding-window prediction,
    computed window by window with activation checkpointing (one window's activations alive at a time)."""

    def __init__(self, network: torch.nn.Module, windows: SlidingWindows, class_index: int,
                 parts: Sequence[tuple[tuple[slice, ...], torch.Tensor]]) -> None:
        super().__init__()
        self.network, self.windows, self.class_index, self.parts = network, windows, class_index, list(parts)

    def _window_score(self, window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (self.network(window)[:, self.class_index] * weights).flatten(1).sum(dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        padded = self.windows.pad_input(inputs)
        total = torch.zeros(inputs.shape[0], dtype=inputs.dtype)
        for box, weights in self.parts:
            window = padded[(slice(None), slice(None), *box)]
            if torch.is_grad_enabled():
                total = total + checkpoint(self._window_score, window, weights, use_reentrant=False)
            else:
                total = total + self._window_score(window, weights)
        return total


def attribute_by_windows(explainer: Explainer, inputs: torch.Tensor, class_index: int, region: torch.Tensor,
                         windows: SlidingWindows,
                         stage: Optional[Stage] = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``explainer``'s map ``[1, 1, *spatial]`` of the class's logits summed over ``region`` (``[*spatial]``),
    for the network run in ``windows`` (see the module notes), and what ran (windows needed of the grid's)."""
    parts = windows.shares(region)
    info: dict[str, Any] = {"patch_size": list(windows.patch), "windows_run": len(parts),
                            "windows_in_grid": len(windows.boxes)}
    if not parts:
        return torch.zeros_like(inputs[:, :1]), info
    if isinstance(explainer, (_CAMBase, Occlusion)):
        return _per_window(explainer, inputs, class_index, windows, parts, stage), info
    return _through_windowed_score(explainer, inputs, class_index, windows, parts, stage), info


def _per_window(explainer: Explainer, inputs: torch.Tensor, class_index: int, windows: SlidingWindows,
                parts: list, stage: Optional[Stage]) -> torch.Tensor:
    padded = windows.pad_input(inputs)
    total = torch.zeros((1, 1, *padded.shape[2:]), dtype=inputs.dtype)
    for index, (box, weights) in enumerate(parts):
        window = padded[(slice(None), slice(None), *box)]
        target = region_logit_sum(class_index, weights)
        part = stage.sub(index / len(parts), (index + 1) / len(parts)) if stage is not None else None
        if isinstance(explainer, _CAMBase):
            local = explainer.unscaled_maps(window, target)
        else:
            local = explainer.attribute(window, target, part)
        total[(slice(None), slice(None), *box)] += local
        if stage is not None:
            stage.report((index + 1) / len(parts), f"{explainer.title}: window {index + 1}/{len(parts)}")
    total = windows.crop(total)
    return scale_to_unit(total) if isinstance(explainer, _CAMBase) else total


def windowed_score(network: torch.nn.Module, class_index: int, region: torch.Tensor,
                   windows: SlidingWindows) -> tuple[WindowedScore, TargetFn]:
    """The sliding-window model's region score as a network of its own, and the target that reads it: for
    gradients of the score that keep one window's activations alive at a time."""
    return WindowedScore(network, windows, class_index, windows.shares(region)), _identity


def _through_windowed_score(explainer: Explainer, inputs: torch.Tensor, class_index: int, windows: SlidingWindows,
                            parts: list, stage: Optional[Stage]) -> torch.Tensor:
    scorer = WindowedScore(explainer.network, windows, class_index, parts)
    windowed = copy.copy(explainer)
    windowed.network = scorer
    if explainer.internal_batch_size is None:
        # One window's activations are alive at a time: the budget is measured on one window.
        sample = windows.pad_input(inputs[:1])[(slice(None), slice(None), *parts[0][0])]
        windowed.internal_batch_size = batch_size_for(explainer.network, sample, explainer.memory_budget_mb)
    return windowed.attribute(inputs, _identity, stage)


def _identity(scores: torch.Tensor) -> torch.Tensor:
    return scores
