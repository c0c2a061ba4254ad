"""Occlusion sensitivity: how much the target score drops when a window of the image is hidden.

Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014. Hidden voxels
take a strongly blurred copy of the image (an in-distribution "nothing specific here"), not zero,
which is out of distribution for CT and for z-scored MRI. Windows whose content the blur would not
change (air, outside the head) cannot change the score and are skipped.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import torch
from scipy.ndimage import gaussian_filter

from ..progress import Stage
from ..targets import TargetFn
from .base import Explainer, batched

__all__ = ["Occlusion"]


class Occlusion(Explainer):
    """Occlusion sensitivity with cubic windows of ``window`` voxels moved by ``stride`` voxels."""

    key = "occlusion"
    title = "Occlusion"
    reference = "Zeiler and Fergus, ECCV 2014 (arXiv:1311.2901)"
    signed = True

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None, internal_batch_size: int = 8,
                 window: int | Sequence[int] = 8, stride: Optional[int | Sequence[int]] = None) -> None:
        super().__init__(network, target_layer, internal_batch_size)
        self.window = window
        self.stride = stride

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        window = _per_axis(self.window, len(spatial))
        stride = _per_axis(self.stride if self.stride is not None else self.window, len(spatial))
        starts = list(itertools.product(*(_axis_starts(s, w, st) for s, w, st in zip(spatial, window, stride))))
        maps = []
        for index, sample in enumerate(inputs):
            maps.append(self._occlude_one(sample.unsqueeze(0), target, starts, window, stage, index, inputs.shape[0]))
        return torch.cat(maps)

    def _occlude_one(self, image: torch.Tensor, target: TargetFn, starts: list, window: tuple,
                     stage: Optional[Stage], index: int, total: int) -> torch.Tensor:
        sigma = [0.0] + [float(w) for w in window]
        fill = torch.from_numpy(gaussian_filter(image[0].numpy(), sigma=sigma, mode="nearest")).unsqueeze(0)
        boxes = [tuple(slice(p, p + w) for p, w in zip(start, window)) for start in starts]
        boxes = [box for box in boxes if (image[(..., *box)] - fill[(..., *box)]).abs().max() > 1e-6]
        attribution = torch.zeros_like(image[:, :1])
        counts = torch.zeros_like(attribution)
        with torch.no_grad():
            base = target(self.network(image))
            for part in batched(len(boxes), self.internal_batch_size):
                chunk = boxes[part]
                batch = image.repeat(len(chunk), *([1] * (image.dim() - 1)))
                for i, box in enumerate(chunk):
                    batch[(i, slice(None), *box)] = fill[(0, slice(None), *box)]
                drops = base - target(self.network(batch))
                for i, box in enumerate(chunk):
                    attribution[(0, slice(None), *box)] += drops[i]
                    counts[(0, slice(None), *box)] += 1
                if stage is not None:
                    stage.report((index + part.stop / max(len(boxes), 1)) / total, f"{self.title}: {part.stop}/{len(boxes)} windows")
        return torch.where(counts > 0, attribution / counts.clamp(min=1), attribution)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "window": self.window, "stride": self.stride or self.window,
                "fill": "Gaussian-blurred image (sigma = window)"}


def _per_axis(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"expected {dims} values, got {values}")
    return values


def _axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis; the last window is moved in so the far edge is covered too."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts
