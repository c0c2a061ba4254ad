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

__all__ = ["spearman", "top_k_iou", "ssim", "dice", "MapComparison"]

ArrayLike = np.ndarray | torch.Tensor


def _flat(a: ArrayLike, mask: Optional[ArrayLike]) -> np.ndarray:
    a = _numpy(a)
    return a[_numpy(mask).astype(bool)] if mask is not None else a.ravel()


def _numpy(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def spearman(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, absolute: bool = False) -> float:
    """Spearman's rank correlation (average ranks for ties). A constant map shares no ranking: 0."""
    x, y = _values(a, mask, absolute), _values(b, mask, absolute)
    return _rank_correlation(x, _ranks(x), y)


def _values(a: ArrayLike, mask: Optional[ArrayLike], absolute: bool) -> np.ndarray:
    values = _flat(a, mask).astype(np.float64)
    return np.abs(values) if absolute else values


def _ranks(x: np.ndarray) -> Optional[np.ndarray]:
    """Average ranks, or None for a map with no ranking (fewer than 2 values, or constant)."""
    return stats.rankdata(x) if x.size >= 2 and np.ptp(x) > 0 else None


def _rank_correlation(x: np.ndarray, x_ranks: Optional[np.ndarray], y: np.ndarray) -> float:
    y_ranks = _ranks(y)
    if x_ranks is None or y_ranks is None:
        return 1.0 if x.size and np.array_equal(x, y) else 0.0
    return float(np.corrcoef(x_ranks, y_ranks)[0, 1])


def _top_k(values: np.ndarray, fraction: float) -> np.ndarray:
    k = max(1, int(round(fraction * values.size)))
    chosen = np.zeros(values.size, dtype=bool)
    chosen[np.argpartition(-values, k - 1)[:k]] = True
    return chosen


def top_k_iou(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, percent: float = 10.0,
              absolute: bool = False) -> float:
    """IoU of the ``percent`` % highest voxels of each map (exactly k voxels each)."""
    x, y = _values(a, mask, absolute), _values(b, mask, absolute)
    return _top_overlap(_top_k(x, percent / 100.0), y, percent) if x.size else 1.0


def _top_overlap(top_x: np.ndarray, y: np.ndarray, percent: float) -> float:
    top_y = _top_k(y, percent / 100.0)
    return float((top_x & top_y).sum() / (top_x | top_y).sum())


def ssim(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, sigma: float = 1.5,
         absolute: bool = False) -> float:
    """Mean structural similarity (Gaussian window ``sigma`` voxels), maps scaled to 0..1 each.

    Constants as in Wang et al. 2004: C1 = (0.01 L)², C2 = (0.03 L)² with L = 1.
    """
    x = _SSIMTerms(a, sigma, absolute)
    return x.against(_SSIMTerms(b, sigma, absolute), mask)


class _SSIMTerms:
    """A map scaled to 0..1 with its local (Gaussian-window) mean and mean square, for SSIM."""

    def __init__(self, a: ArrayLike, sigma: float, absolute: bool) -> None:
        values = _numpy(a).astype(np.float64)
        self.values = _unit_range(np.abs(values) if absolute else values)
        self.sigma = sigma
        self.mean = self.blur(self.values)
        self.variance = self.blur(self.values * self.values) - self.mean ** 2

    def blur(self, v: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(v, self.sigma, mode="nearest", truncate=3.5)

    def against(self, other: "_SSIMTerms", mask: Optional[ArrayLike]) -> float:
        """Mean SSIM index of the two maps (inside ``mask``). Constants as in Wang et al. 2004, L = 1."""
        if not self.values.size:
            return 1.0
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        cov = self.blur(self.values * other.values) - self.mean * other.mean
        index = ((2 * self.mean * other.mean + c1) * (2 * cov + c2)) / \
            ((self.mean ** 2 + other.mean ** 2 + c1) * (self.variance + other.variance + c2))
        return float(_flat(index, mask).mean())


def _unit_range(v: np.ndarray) -> np.ndarray:
    low, high = float(v.min()), float(v.max())
    return (v - low) / (high - low) if high > low else np.zeros_like(v)


def dice(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None) -> float:
    """Dice overlap of two non-zero masks; two empty masks agree perfectly (1)."""
    x, y = _flat(a, mask).astype(bool), _flat(b, mask).astype(bool)
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


class MapComparison:
    """Spearman, top-k % IoU (``topk_iou``, k = ``top_percent``) and SSIM of maps against one reference.

    What depends on the reference alone (its ranks, its top voxels, its local SSIM statistics) is
    computed once: a sweep compares dozens of perturbed maps with the same reference.
    """

    def __init__(self, reference: ArrayLike, mask: Optional[ArrayLike] = None, absolute: bool = False,
                 top_percent: float = 10.0, sigma: float = 1.5) -> None:
        self.mask, self.absolute, self.top_percent, self.sigma = mask, absolute, top_percent, sigma
        self.values = _values(reference, mask, absolute)
        self.ranks = _ranks(self.values)
        self.top = _top_k(self.values, top_percent / 100.0) if self.values.size else None
        self.ssim_terms = _SSIMTerms(reference, sigma, absolute)

    def __call__(self, other: ArrayLike) -> dict[str, float]:
        values = _values(other, self.mask, self.absolute)
        return {
            "spearman": _rank_correlation(self.values, self.ranks, values),
            "topk_iou": _top_overlap(self.top, values, self.top_percent) if self.top is not None else 1.0,
            "ssim": self.ssim_terms.against(_SSIMTerms(other, self.sigma, self.absolute), self.mask),
        }

