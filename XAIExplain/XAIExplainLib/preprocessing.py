"""The round trip between the input image's grid and the model's grid.

A model is trained on volumes of one orientation, voxel spacing and (for classifiers) size. This module
resamples any input (oblique, anisotropic, odd-sized) onto that grid, normalises intensities as the
model card says, and brings every map the engine computes back onto the **input's own grid** — same
size, spacing, origin and direction. It is done here, once, and nowhere else.

Arrays on the model grid are in ``(x, y, z)`` order (MONAI's convention), i.e. the transpose of
SimpleITK's ``(z, y, x)`` arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .errors import XAIModelError

__all__ = [
    "InputSpec",
    "IntensitySpec",
    "orientation_direction",
    "model_grid",
    "to_model_grid",
    "to_input_grid",
    "normalise_intensity",
    "array_to_model_image",
]

# Unit vectors of the anatomical directions in ITK's LPS world.
_AXIS_VECTORS = {
    "R": (-1.0, 0.0, 0.0),
    "L": (1.0, 0.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class InputSpec:
    """The grid a model expects: orientation code (``"RAS"``: axis 0 points Right…), spacing, size.

    ``size`` is fixed for classifiers (the image is centred in it, cropped or padded). For
    fully-convolutional models it may be ``None``: the grid then covers the whole image, rounded up to
    a multiple of ``divisible_by``, and ``patch_size`` (if given) is the sliding-window size.
    """

    spacing_mm: tuple[float, float, float]
    orientation: str = "RAS"
    size: Optional[tuple[int, int, int]] = None
    divisible_by: int = 1
    patch_size: Optional[tuple[int, int, int]] = None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], covers_whole_image: bool) -> "InputSpec":
        try:
            spacing = tuple(float(s) for s in meta["spacing_mm"])
            size = tuple(int(s) for s in meta["size"]) if meta.get("size") else None
        except (KeyError, TypeError, ValueError) as error:
            raise XAIModelError(f"Model metadata xai.input is incomplete or malformed ({error}).") from None
        if len(spacing) != 3 or any(s <= 0 for s in spacing) or (size is not None and len(size) != 3):
            raise XAIModelError("Model metadata xai.input needs 3 positive spacings and 3 sizes.")
        orientation = str(meta.get("orientation", "RAS")).upper()
        orientation_direction(orientation)  # validates the code
        divisible_by = int(meta.get("divisible_by", 1))
        if covers_whole_image:
            return cls(spacing, orientation, None, divisible_by, size)
        return cls(spacing, orientation, size, divisible_by, None)


@dataclass(frozen=True)
class IntensitySpec:
    """How raw intensities become network inputs (``zscore``, ``percentile`` or ``ct_window``)."""

    kind: str = "zscore"
    params: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "IntensitySpec":
        kind = str(meta.get("kind", "zscore"))
        if kind not in ("zscore", "percentile", "ct_window", "none"):
            raise XAIModelError(f"Unknown intensity normalisation '{kind}' in model metadata.")
        if kind == "ct_window" and not {"center", "width"} <= set(meta):
            raise XAIModelError("Intensity normalisation 'ct_window' needs 'center' and 'width'.")
        params = {k: v for k, v in meta.items() if k != "kind"}
        return cls(kind, params)


def orientation_direction(code: str) -> np.ndarray:
    """3x3 ITK direction matrix (columns: LPS unit vector of each array axis) for e.g. ``"RAS"``."""
    code = code.upper()
    if len(code) != 3 or any(c not in _AXIS_VECTORS for c in code):
        raise XAIModelError(f"Orientation '{code}' is not a 3-letter code such as RAS or LPS.")
    axes = sorted({"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[c] for c in code)
    if axes != [0, 1, 2]:
        raise XAIModelError(f"Orientation '{code}' names one anatomical axis twice.")
    return np.array([_AXIS_VECTORS[c] for c in code]).T


def model_grid(image: sitk.Image, spec: InputSpec) -> sitk.Image:
    """An empty image whose geometry is the model's grid, centred on the input's physical centre."""
    direction = orientation_direction(spec.orientation)
    spacing = np.asarray(spec.spacing_mm, dtype=float)
    if spec.size is not None:
        size = np.asarray(spec.size, dtype=int)
    else:
        extent = _extent_along(image, direction)
        size = np.ceil(extent / spacing).astype(int) + 1
        size = np.maximum(size, np.asarray(spec.patch_size or (1, 1, 1)))
        size = (np.ceil(size / spec.divisible_by) * spec.divisible_by).astype(int)
    centre = np.asarray(
        image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])
    )
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def to_model_grid(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Resample ``image`` (linear) onto ``grid``; voxels outside the image take its minimum value.

    Returns a float32 array in ``(x, y, z)`` order.
    """
    background = float(sitk.GetArrayViewFromImage(image).min())
    resampled = sitk.Resample(
        image, grid, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32
    )
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))


def array_to_model_image(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Wrap an ``(x, y, z)`` array computed on the model grid as an image with the grid's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def to_input_grid(array: np.ndarray, grid: sitk.Image, reference: sitk.Image, outside: float = 0.0) -> sitk.Image:
    """Bring an ``(x, y, z)`` map on the model ``grid`` back onto the input image's grid (linear).

    The result has exactly the ``reference`` image's size, spacing, origin and direction; voxels the
    model never saw get ``outside``.
    """
    moving = array_to_model_image(array, grid)
    return sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)


def normalise_intensity(array: np.ndarray, spec: IntensitySpec) -> np.ndarray:
    """Apply the model's intensity normalisation to a model-grid array (float32 out).

    * ``zscore``: subtract the mean and divide by the standard deviation — of the voxels brighter
      than the background (the array's minimum) when ``nonzero`` is true, as MONAI's
      ``NormalizeIntensity(nonzero=True)`` does for skull-stripped MRI.
    * ``percentile``: map the ``lower``..``upper`` percentiles to 0..1, clipped.
    * ``ct_window``: map Hounsfield units ``center ± width/2`` to 0..1, clipped.
    """
    array = np.asarray(array, dtype=np.float32)
    params = spec.params
    if spec.kind == "zscore":
        values = array[array > array.min()] if params.get("nonzero", False) else array
        if values.size == 0:
            values = array
        mean, std = float(values.mean()), float(values.std())
        return ((array - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    if spec.kind == "percentile":
        low, high = np.percentile(array, [float(params.get("lower", 1.0)), float(params.get("upper", 99.0))])
        scale = high - low if high > low else 1.0
        return np.clip((array - low) / scale, 0.0, 1.0).astype(np.float32)
    if spec.kind == "ct_window":
        low = float(params["center"]) - float(params["width"]) / 2.0
        return np.clip((array - low) / float(params["width"]), 0.0, 1.0).astype(np.float32)
    return array


def _extent_along(image: sitk.Image, direction: np.ndarray) -> np.ndarray:
    """Physical extent (mm) of the image's voxel-centre bounding box along each model axis."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, size)])
        for corner in np.ndindex(2, 2, 2)
    ]
    projected = np.asarray(corners) @ direction  # (8, 3): coordinates along each model axis
    return projected.max(axis=0) - projected.min(axis=0)

