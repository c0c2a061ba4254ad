"""Where a map's main evidence is: its top few percent, the region around its peak, and how it
relates to a lesion outline and to other methods' maps.

Everything is measured on the input's own grid (where the engine returns every map), in the units a
reader uses: RAS millimetres, 1-based slice numbers, millilitres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats

__all__ = ["RegionFacts", "describe_region", "top_region_mask", "slice_axis", "map_agreement", "MapAgreement",
           "plain_location"]

#: Connected parts of the top region smaller than this (mL) are not counted as separate regions.
_MIN_REGION_ML = 0.05
#: Voxels sampled for rank correlations between maps (a deterministic stride above this).
_MAX_CORRELATION_VOXELS = 200_000


@dataclass
class RegionFacts:
    """The top ``top_percent`` of one map and the connected region around its peak."""

    top_percent: float
    threshold: float
    peak_ijk: tuple[int, int, int]
    peak_ras_mm: tuple[float, float, float]
    slice_number: int
    slice_count: int
    region_ml: float
    region_count: int
    peak_in_lesion: Optional[bool] = None
    fraction_in_lesion: Optional[float] = None
    lesion_ml: Optional[float] = None
    lesion_centre_ras_mm: Optional[tuple[float, float, float]] = None
    peak_to_lesion_mm: Optional[float] = None
    mask: np.ndarray = field(default=None, repr=False)  # bool, array order (k, j, i): the top region

    def to_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "mask"}


@dataclass(frozen=True)
class MapAgreement:
    """How two methods' maps agree: rank correlation of all voxels, overlap of their top regions."""

    first: str
    second: str
    spearman: float
    top_dice: float


def slice_axis(image: sitk.Image) -> int:
    """The image axis (0, 1, 2 = i, j, k) closest to the patient's S axis: its index numbers the axial
    slices (whatever order the volume is stored in)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2])))  # row 2: the S (= LPS z) component of each axis


def top_region_mask(values: np.ndarray, top_percent: float) -> tuple[np.ndarray, float]:
    """Voxels in the top ``top_percent`` of the positive part of ``values``; returns (mask, threshold).

    Only positive values count as evidence for the target (signed maps carry evidence against it
    below zero); a map with no positive value has an empty top region.
    """
    positive = np.where(np.isfinite(values), np.maximum(values, 0.0), 0.0)
    if not positive.any():
        return np.zeros(values.shape, dtype=bool), float("inf")
    threshold = float(np.percentile(positive, 100.0 - top_percent))
    if threshold <= 0.0:
        threshold = float(positive[positive > 0].min())
    return positive >= threshold, threshold


def describe_region(saliency: sitk.Image, top_percent: float, lesion: Optional[sitk.Image] = None) -> RegionFacts:
    """Peak, slice, and the size of the connected top region around the peak of ``saliency``.

    ``lesion``: a mask on the same grid; then also whether the peak lies inside it (pointing game) and
    which fraction of the top region does.
    """
    values = sitk.GetArrayViewFromImage(saliency)
    top, threshold = top_region_mask(values, top_percent)
    k, j, i = (int(v) for v in np.unravel_index(int(np.nanargmax(values)), values.shape))
    lps = saliency.TransformIndexToPhysicalPoint((i, j, k))
    voxel_ml = float(np.prod(saliency.GetSpacing())) / 1000.0
    labels, count = ndimage.label(top)
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    main = labels == labels[k, j, i] if labels[k, j, i] else np.zeros_like(top)
    axis = slice_axis(saliency)
    facts = RegionFacts(
        top_percent=float(top_percent),
        threshold=threshold,
        peak_ijk=(i, j, k),
        peak_ras_mm=(-lps[0], -lps[1], lps[2]),
        slice_number=(i, j, k)[axis] + 1,
        slice_count=saliency.GetSize()[axis],
        region_ml=float(main.sum() * voxel_ml),
        region_count=int((sizes >= _MIN_REGION_ML).sum()) if count else 0,
        mask=top,
    )
    if lesion is not None:
        inside = sitk.GetArrayViewFromImage(lesion) > 0
        facts.peak_in_lesion = bool(inside[k, j, i])
        facts.fraction_in_lesion = float((top & inside).sum() / top.sum()) if top.any() else 0.0
        facts.lesion_ml = float(inside.sum() * voxel_ml)
        if inside.any():
            centre_kji = np.argwhere(inside).mean(axis=0)
            centre = saliency.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_kji[::-1]])
            facts.lesion_centre_ras_mm = (-centre[0], -centre[1], centre[2])
            facts.peak_to_lesion_mm = float(np.linalg.norm(np.subtract(centre, lps)))
    return facts


def map_agreement(first: str, first_map: sitk.Image, first_top: np.ndarray,
                  second: str, second_map: sitk.Image, second_top: np.ndarray) -> MapAgreement:
    """Spearman rank correlation of two maps over all voxels and Dice overlap of their top regions."""
    a = sitk.GetArrayViewFromImage(first_map).ravel()
    b = sitk.GetArrayViewFromImage(second_map).ravel()
    stride = max(1, a.size // _MAX_CORRELATION_VOXELS)
    rho = stats.spearmanr(a[::stride], b[::stride]).statistic
    union = first_top.sum() + second_top.sum()
    dice = float(2.0 * (first_top & second_top).sum() / union) if union else 0.0
    return MapAgreement(first, second, float(np.nan_to_num(rho)), dice)


def plain_location(image: sitk.Image, peak_ijk: tuple[int, int, int]) -> dict[str, str]:
    """The peak's side, front/back and up/down position relative to the middle of the body, in words.

    The middle is the centre of the voxels brighter than the image's Otsu threshold (the body, not
    the air around it). A coordinate within a tenth of the body's extent of the middle is "middle".
    """
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.Cast(image, sitk.sitkFloat32))
    body = sitk.GetArrayViewFromImage(image) > otsu.GetThreshold()
    if not body.any():
        body = np.ones(body.shape, dtype=bool)
    points = np.argwhere(body)[:, ::-1]  # (i, j, k)
    centre_ijk = points.mean(axis=0)
    extent = points.max(axis=0) - points.min(axis=0) + 1
    direction = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    offset_lps = direction @ (np.asarray(peak_ijk, dtype=float) - centre_ijk)
    half_mm = np.abs(direction) @ extent / 2.0
    words = {}
    for axis, (positive, negative, key) in enumerate((("left", "right", "side"), ("back", "front", "front_back"),
                                                      ("upper", "lower", "up_down"))):
        value = offset_lps[axis]
        words[key] = "middle" if abs(value) < 0.1 * 2 * half_mm[axis] else (positive if value > 0 else negative)
    return words

