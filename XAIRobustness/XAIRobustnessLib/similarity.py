"""How alike two explanation maps (or two segmentations) are, N-D written once.

All functions take NumPy arrays or torch tensors of the same shape and an optional boolean ``mask``
restricting the comparison (the sweep compares maps inside the anatomy, so that the empty background
both maps agree on does not inflate the score). Maps are compared on the model grid, where they were
computed; resampling them to the input grid adds nothing but interpolation.

* Spearman rank correlation — the measure of Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018 (with ``absolute=True``, of the maps' magnitudes, as they do).
* Top-k % intersection over union: do the two maps point at the same strongest voxels?
* SSIM (Wang et al., "Image quality assessment: from error visibility to structural similarity",
  IEEE TIP 2004) with a Gaussian window, in 3-D, on maps scaled to 0..1 by their own maximum.
* Dice overlap of two label masks.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy import ndimage, stats

__all__ = ["spearman", "top_k_iou", "ssim", "dice", "compare_maps"]

ArrayLike = np.ndarray | torch.Tensor


def _flat(a: ArrayLike, mask: Optional[ArrayLike]) -> np.ndarray:
    a = _numpy(a)
    return a[_numpy(mask).astype(bool)] if mask is not None else a.ravel()


def _numpy(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def spearman(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, absolute: bool = False) -> float:
    """Spearman's rank correlation (average ranks for ties). A constant map shares no ranking: 0."""
    x, y = _flat(a, mask).astype(np.float64), _flat(b, mask).astype(np.float64)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 1.0 if x.size and np.array_equal(x, y) else 0.0
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _top_k(values: np.ndarray, fraction: float) -> np.ndarray:
    k = max(1, int(round(fraction * values.size)))
    chosen = np.zeros(values.size, dtype=bool)
    chosen[np.argpartition(-values, k - 1)[:k]] = True
    return chosen


def top_k_iou(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, percent: float = 10.0,
              absolute: bool = False) -> float:
    """IoU of the ``percent`` % highest voxels of each map (exactly k voxels each)."""
    x, y = _flat(a, mask).astype(np.float64), _flat(b, mask).astype(np.float64)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if x.size == 0:
        return 1.0
    top_x, top_y = _top_k(x, percent / 100.0), _top_k(y, percent / 100.0)
    return float((top_x & top_y).sum() / (top_x | top_y).sum())


def ssim(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, sigma: float = 1.5,
         absolute: bool = False) -> float:
    """Mean structural similarity (Gaussian window ``sigma`` voxels), maps scaled to 0..1 each.

    Constants as in Wang et al. 2004: C1 = (0.01 L)², C2 = (0.03 L)² with L = 1.
    """
    x, y = _numpy(a).astype(np.float64), _numpy(b).astype(np.float64)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    x, y = _unit_range(x), _unit_range(y)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda v: ndimage.gaussian_filter(v, sigma, mode="nearest", truncate=3.5)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(_flat(index, mask).mean()) if index.size else 1.0


def _unit_range(v: np.ndarray) -> np.ndarray:
    low, high = float(v.min()), float(v.max())
    return (v - low) / (high - low) if high > low else np.zeros_like(v)


def dice(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None) -> float:
    """Dice overlap of two non-zero masks; two empty masks agree perfectly (1)."""
    x, y = _flat(a, mask).astype(bool), _flat(b, mask).astype(bool)
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def compare_maps(reference: ArrayLike, other: ArrayLike, mask: Optional[ArrayLike] = None, absolute: bool = False,
                 top_percent: float = 10.0) -> dict[str, float]:
    """Spearman, top-k % IoU (``topk_iou``, k = ``top_percent``) and SSIM of ``other`` against ``reference``."""
    return {
        "spearman": spearman(reference, other, mask, absolute),
        "topk_iou": top_k_iou(reference, other, mask, top_percent, absolute),
        "ssim": ssim(reference, other, mask, absolute=absolute),
    }
