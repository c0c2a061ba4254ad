"""Review regions: where the model's doubt is highest, for a reader to look at first.

Shared by the Slicer module (a label map over the image), the viewer and the DICOM SEG export, so that all
three outline the very same voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["DEFAULT_REVIEW_PERCENTILE", "review_regions"]

DEFAULT_REVIEW_PERCENTILE = 90.0


def review_regions(uncertainty: sitk.Image, percentile: float = DEFAULT_REVIEW_PERCENTILE) -> tuple[sitk.Image, float]:
    """Voxels whose uncertainty is above ``percentile`` of the non-zero uncertainty values.

    Zero means "no doubt at all" (e.g. background the model never looked at); counting it would let a
    mostly-empty map flag everything it touches. Returns (uint8 mask of 0 and 1 on the map's grid,
    threshold used; infinite when the map holds no doubt at all, and the mask is then empty).
    """
    values = sitk.GetArrayViewFromImage(uncertainty)
    positive = values[np.isfinite(values) & (values > 0)]
    threshold = float(np.percentile(positive, percentile)) if positive.size else np.inf
    mask = sitk.GetImageFromArray((values > threshold).astype(np.uint8))
    mask.CopyInformation(uncertainty)
    return mask, threshold
