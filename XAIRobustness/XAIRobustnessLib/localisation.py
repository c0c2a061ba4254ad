"""How well a map localises a known lesion: the ground-truth metrics of saliency benchmarks.

* **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016;
  used for medical images by Saporta et al., Nat. Mach. Intell. 2022): a hit when the map's maximum
  lies inside the lesion.
* **Attribution mass in the lesion**: the share of the map's positive mass inside the lesion, read
  against the lesion's share of the body's volume (a map that knows nothing scores about that share).
* **AUPRC** of the positive map as a voxel-wise detector of the lesion (Arun et al., Radiol. AI 2021),
  read against its chance level, the lesion's share of the body.
* **Top-k IoU**: overlap of the map's top region, as many voxels as the lesion has, with the lesion.

All are computed on one grid (the engine returns every map on the input's grid) and only inside the
body (voxels above the image minimum), so the air around a patient does not flatter any method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

__all__ = ["LocalisationScores", "localisation_scores", "average_precision"]


@dataclass(frozen=True)
class LocalisationScores:
    """Ground-truth localisation of one map on one case."""

    pointing_hit: bool
    mass_in_lesion: float
    lesion_share: float
    auprc: float
    top_k_iou: float

    def to_dict(self) -> dict:
        return asdict(self)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision–recall curve as average precision, ``Σ (R_n − R_{n−1}) P_n``, with tied
    scores taken as one threshold (so a constant map scores the positives' share, not better)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    positives = int(truth.sum())
    if positives == 0:
        raise ValueError("average precision needs at least one lesion voxel")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_truth = scores[order], truth[order]
    true_positives = np.cumsum(sorted_truth)
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = true_positives[last_of_tie].astype(np.float64)
    precision = tp / (last_of_tie + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def localisation_scores(saliency: sitk.Image, lesion: sitk.Image, image: Optional[sitk.Image] = None) -> LocalisationScores:
    """Pointing game, positive mass in the lesion, AUPRC and top-k IoU of ``saliency`` against ``lesion``.

    ``image`` (same grid) defines the body: voxels above its minimum; without it every voxel counts.
    Only positive values are evidence for the target (signed maps put evidence against it below 0).
    """
    values = sitk.GetArrayFromImage(saliency).astype(np.float64)
    inside = sitk.GetArrayViewFromImage(lesion) > 0
    if values.shape != inside.shape:
        raise ValueError("the map and the lesion mask must be on the same grid")
    if not inside.any():
        raise ValueError("the lesion mask is empty: localisation needs a lesion")
    body = np.ones(values.shape, dtype=bool)
    if image is not None:
        array = sitk.GetArrayViewFromImage(image)
        body = array > array.min()
    body |= inside
    positive = np.where(np.isfinite(values) & body, np.maximum(values, 0.0), 0.0)
    peak = np.unravel_index(int(np.argmax(np.where(body, np.nan_to_num(values, nan=-np.inf), -np.inf))), values.shape)
    total = positive.sum()
    lesion_voxels = int(inside.sum())
    top = np.zeros(values.shape, dtype=bool)
    if total > 0:
        top.ravel()[np.argsort(-positive.ravel(), kind="stable")[:lesion_voxels]] = True
        top &= positive > 0
    union = (top | inside).sum()
    return LocalisationScores(
        pointing_hit=bool(inside[peak]),
        mass_in_lesion=float(positive[inside].sum() / total) if total > 0 else 0.0,
        lesion_share=float(lesion_voxels / body.sum()),
        auprc=average_precision(positive[body], inside[body]),
        top_k_iou=float((top & inside).sum() / union) if union else 0.0,
    )
