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

from .errors import XAIInputError, XAIModelError

__all__ = [
    "MAX_MODEL_GRID_VOXELS",
    "CardProblems",
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


#: Most voxels a model grid may have (a 400^3 grid: 256 MB per float32 copy), whatever the card says.
MAX_MODEL_GRID_VOXELS = 64_000_000


@dataclass(frozen=True)
class InputSpec:
    """The grid a model expects: orientation code (``"RAS"``: axis 0 points Right…), spacing, size.

    ``size`` is fixed for classifiers (the image is centred in it, cropped or padded). For
    fully-convolutional models it may be ``None``: the grid then covers the whole image, rounded up to
    a multiple of ``divisible_by``, and ``patch_size`` (if given) is the sliding-window size.
    ``max_grid_voxels`` bounds that grid (the card may lower :data:`MAX_MODEL_GRID_VOXELS`).
    """

    spacing_mm: tuple[float, float, float]
    orientation: str = "RAS"
    size: Optional[tuple[int, int, int]] = None
    divisible_by: int = 1
    patch_size: Optional[tuple[int, int, int]] = None
    max_grid_voxels: int = MAX_MODEL_GRID_VOXELS
    #: Fraction by which sliding windows overlap (the bundle's inferer, else MONAI's default 0.25).
    overlap: float = 0.25

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], covers_whole_image: bool) -> "InputSpec":
        """The card's ``xai.input``; every problem is listed in one :class:`XAIModelError`."""
        card = CardProblems("xai.input")
        if not isinstance(meta, Mapping):
            raise XAIModelError(f"Model metadata xai.input must be an object, not {type(meta).__name__}.")
        spacing = card.numbers(meta, "spacing_mm", 3, low=0.01, high=100.0)
        size = card.integers(meta, "size", 3, low=1, high=2048, required=False)
        orientation = str(meta.get("orientation", "RAS")).upper()
        try:
            orientation_direction(orientation)
        except XAIModelError as error:
            card.add_error(error)
        divisible_by = card.integer(meta, "divisible_by", 1, low=1, high=256)
        limit = card.integer(meta, "max_grid_voxels", MAX_MODEL_GRID_VOXELS, low=1, high=MAX_MODEL_GRID_VOXELS)
        overlap = card.number(meta, "overlap", 0.25, low=0.0, high=0.95)
        card.raise_if_any()
        if covers_whole_image:
            return cls(spacing, orientation, None, divisible_by, size, limit, overlap)
        return cls(spacing, orientation, size, divisible_by, None, limit, overlap)


@dataclass(frozen=True)
class IntensitySpec:
    """How raw intensities become network inputs (``zscore``, ``percentile``, ``ct_window``, ``scale_range``
    or ``none``)."""

    kind: str = "zscore"
    params: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "IntensitySpec":
        if not isinstance(meta, Mapping):
            raise XAIModelError(f"Model metadata xai.intensity must be an object, not {type(meta).__name__}.")
        kind = meta.get("kind", "zscore")
        if kind not in ("zscore", "percentile", "ct_window", "scale_range", "none"):
            raise XAIModelError(f"Unknown intensity normalisation {kind!r} in model metadata.")
        card = CardProblems("xai.intensity")
        params: dict[str, Any] = {}
        if kind == "zscore":
            nonzero = meta.get("nonzero", False)
            if not isinstance(nonzero, bool):
                card.add(f"xai.intensity.nonzero must be true or false, not {nonzero!r}")
            params["nonzero"] = nonzero
        elif kind == "percentile":
            params["lower"] = card.number(meta, "lower", 1.0, low=0.0, high=100.0)
            params["upper"] = card.number(meta, "upper", 99.0, low=0.0, high=100.0)
            if not card and params["lower"] >= params["upper"]:
                card.add(f"xai.intensity.lower ({params['lower']:g}) must be below upper ({params['upper']:g})")
        elif kind == "ct_window":
            if not {"center", "width"} <= set(meta):
                raise XAIModelError("Intensity normalisation 'ct_window' needs 'center' and 'width'.")
            params["center"] = card.number(meta, "center", None, low=-1e6, high=1e6)
            params["width"] = card.number(meta, "width", None, low=1e-6, high=1e7)
        elif kind == "scale_range":  # MONAI's ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)
            for key, default in (("a_min", None), ("a_max", None), ("b_min", 0.0), ("b_max", 1.0)):
                params[key] = card.number(meta, key, default, low=-1e7, high=1e7)
            clip = meta.get("clip", False)
            if not isinstance(clip, bool):
                card.add(f"xai.intensity.clip must be true or false, not {clip!r}")
            params["clip"] = clip
            if not card and params["a_min"] == params["a_max"]:
                card.add("xai.intensity.a_min and a_max must differ")
        card.raise_if_any()
        return cls(kind, params)


_INVALID_CARD = "Invalid model card: "


class CardProblems:
    """The problems found in one section of a model card, raised together: one clause per problem."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.problems: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.problems)

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise XAIModelError(f"{_INVALID_CARD}" + "; ".join(self.problems) + ".")

    def add_error(self, error: XAIModelError) -> None:
        """A sub-section's problems (or any other refusal of it), in this list."""
        self.add(str(error).removeprefix(_INVALID_CARD).rstrip("."))

    def number(self, meta: Mapping[str, Any], key: str, default: Optional[float], low: float, high: float) -> float:
        value = meta.get(key, default)
        if not _is_number(value) or not low <= float(value) <= high:
            self.add(f"{self.section}.{key} must be a number from {low:g} to {high:g}, not {value!r}")
            return float(default if default is not None else low)
        return float(value)

    def integer(self, meta: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
        value = meta.get(key, default)
        if not _is_integer(value) or not low <= int(value) <= high:
            self.add(f"{self.section}.{key} must be a whole number from {low} to {high}, not {value!r}")
            return default
        return int(value)

    def numbers(self, meta: Mapping[str, Any], key: str, count: int, low: float, high: float) -> tuple:
        value = meta.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != count or \
                not all(_is_number(v) and low <= float(v) <= high for v in value):
            self.add(f"{self.section}.{key} must be {count} numbers from {low:g} to {high:g}, not {value!r}")
            return (1.0,) * count
        return tuple(float(v) for v in value)

    def integers(self, meta: Mapping[str, Any], key: str, count: int, low: int, high: int,
                 required: bool = True) -> Optional[tuple]:
        value = meta.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != count or \
                not all(_is_integer(v) and low <= int(v) <= high for v in value):
            self.add(f"{self.section}.{key} must be {count} whole numbers from {low} to {high}, not {value!r}")
            return None
        return tuple(int(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _is_integer(value: Any) -> bool:
    return _is_number(value) and float(value) == int(value)


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
        size = np.asarray(spec.size, dtype=np.int64)
    else:
        extent = _extent_along(image, direction)
        covering = np.maximum(np.ceil(extent / spacing) + 1, np.asarray(spec.patch_size or (1, 1, 1)))
        covering = np.ceil(covering / spec.divisible_by) * spec.divisible_by  # float: cannot overflow
        if float(np.prod(covering)) > spec.max_grid_voxels:
            raise XAIInputError(
                f"On the model's grid ({_format_mm(spacing)} mm voxels) this image, {_format_mm(extent)} mm across, "
                f"would take {' x '.join(f'{c:.0f}' for c in covering)} = {np.prod(covering) / 1e6:.0f} M voxels; the "
                f"limit is {spec.max_grid_voxels / 1e6:.0f} M — crop the image to the region to explain."
            )
        size = covering.astype(np.int64)
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
    """Resample ``image`` (linear, in its stored pixel type: no full-size float copy of the input) onto
    ``grid``; voxels outside the image take its minimum value.

    Returns an ``(x, y, z)`` array: float64 for a float64 image (its values may not fit in float32 before
    they are normalised), float32 otherwise.
    """
    background = float(sitk.GetArrayViewFromImage(image).min())
    output_type = sitk.sitkFloat64 if image.GetPixelID() == sitk.sitkFloat64 else sitk.sitkFloat32
    resampled = sitk.Resample(
        image, grid, sitk.Transform(), sitk.sitkLinear, background, output_type
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
    * ``scale_range``: MONAI's ``ScaleIntensityRange``: ``a_min..a_max`` linearly onto ``b_min..b_max``,
      clipped to it if ``clip``.

    The arithmetic is in float64: in float32, values near ±3e38 overflow the mean and standard deviation
    into NaN. A result float32 cannot hold is refused rather than passed to the network.
    """
    array = np.asarray(array, dtype=np.float64)
    params = spec.params
    if spec.kind == "zscore":
        values = array[array > array.min()] if params.get("nonzero", False) else array
        if values.size == 0:
            values = array
        mean, std = float(values.mean()), float(values.std())
        normalised = (array - mean) / (std if std > 0 else 1.0)
    elif spec.kind == "percentile":
        low, high = np.percentile(array, [float(params.get("lower", 1.0)), float(params.get("upper", 99.0))])
        scale = high - low if high > low else 1.0
        normalised = np.clip((array - low) / scale, 0.0, 1.0)
    elif spec.kind == "ct_window":
        low = float(params["center"]) - float(params["width"]) / 2.0
        normalised = np.clip((array - low) / float(params["width"]), 0.0, 1.0)
    elif spec.kind == "scale_range":
        low, high = float(params["a_min"]), float(params["a_max"])
        b_low, b_high = float(params["b_min"]), float(params["b_max"])
        normalised = (array - low) / (high - low) * (b_high - b_low) + b_low
        if params.get("clip"):
            normalised = np.clip(normalised, min(b_low, b_high), max(b_low, b_high))
    else:
        normalised = array
    if not np.all(np.isfinite(normalised)) or np.abs(normalised).max() > np.finfo(np.float32).max:
        raise XAIInputError(
            "The image's intensities cannot be normalised into numbers the network can take (their range is too "
            "wide for 32-bit floats); rescale the image first."
        )
    return normalised.astype(np.float32)


def _format_mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _extent_along(image: sitk.Image, direction: np.ndarray) -> np.ndarray:
    """Physical extent (mm) of the image's voxel-centre bounding box along each model axis."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, size)])
        for corner in np.ndindex(2, 2, 2)
    ]
    projected = np.asarray(corners) @ direction  # (8, 3): coordinates along each model axis
    return projected.max(axis=0) - projected.min(axis=0)

