"""Whether a case lies inside the input domain a model was trained on, as its card states it.

A network answers every input, however far from what it learnt: a scan scaled a thousandfold or one with a
few voxels of 1e30 still gets "no lesion, 0.99". The card's ``xai.domain`` records what training saw —
voxel spacing (``spacing_mm.min`` / ``.max`` per axis, in the image's own index order) and the intensity
envelope (``intensity_range``: the 1st to 99th percentile range of the training images) — and each result
says whether the case is inside it. A card without a domain gets no verdict (``inside`` is None), never an
invented one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .preprocessing import CardProblems

__all__ = ["Domain", "assess_applicability"]

#: How far (in envelope widths) a case's 1st / 99th percentile may lie beyond the training envelope.
INTENSITY_MARGIN = 0.5
#: Voxels sampled per axis for the percentiles (a strided view: no copy of a large volume).
_SAMPLES_PER_AXIS = 96


@dataclass(frozen=True)
class Domain:
    """The card's ``xai.domain``: what the training images were like."""

    spacing_min: Optional[tuple[float, float, float]] = None
    spacing_max: Optional[tuple[float, float, float]] = None
    intensity_range: Optional[tuple[float, float]] = None
    source: str = ""

    @classmethod
    def from_metadata(cls, meta: Any) -> "Domain":
        if meta is None:
            return cls()
        card = CardProblems("xai.domain")
        if not isinstance(meta, Mapping):
            card.add(f"xai.domain must be an object, not {type(meta).__name__}")
            card.raise_if_any()
        spacing = meta.get("spacing_mm")
        low = high = None
        if spacing is not None:
            if not isinstance(spacing, Mapping):
                card.add("xai.domain.spacing_mm must be an object with min and max")
            else:
                spacing_card = CardProblems("xai.domain.spacing_mm")
                low = spacing_card.numbers(spacing, "min", 3, low=1e-3, high=1e3)
                high = spacing_card.numbers(spacing, "max", 3, low=1e-3, high=1e3)
                card.problems += spacing_card.problems
                if not spacing_card and any(a > b for a, b in zip(low, high)):
                    card.add("xai.domain.spacing_mm.min must not exceed max")
        intensity = None
        if meta.get("intensity_range") is not None:
            intensity = card.numbers(meta, "intensity_range", 2, low=-1e9, high=1e9)
            if intensity[0] >= intensity[1]:
                card.add("xai.domain.intensity_range must go from low to high")
        card.raise_if_any()
        return cls(low, high, tuple(intensity) if intensity else None, str(meta.get("source", "")))

    @property
    def stated(self) -> bool:
        return self.spacing_min is not None or self.intensity_range is not None


def assess_applicability(image: sitk.Image, domain: Domain) -> dict:
    """``{"inside": True/False/None, "checks": [{"check", "inside", "detail"}]}`` for ``image``."""
    checks = []
    if domain.spacing_min is not None and domain.spacing_max is not None:
        spacing = image.GetSpacing()
        inside = all(low <= s <= high for s, low, high in zip(spacing, domain.spacing_min, domain.spacing_max))
        checks.append({"check": "spacing", "inside": inside, "detail": (
            f"voxel spacing {_mm(spacing)} mm "
            f"{'within' if inside else 'outside'} the training range {_mm(domain.spacing_min)} to "
            f"{_mm(domain.spacing_max)} mm")})
    if domain.intensity_range is not None:
        low, high = domain.intensity_range
        width = high - low
        p1, p99 = _percentiles(image)
        inside = p1 >= low - INTENSITY_MARGIN * width and p99 <= high + INTENSITY_MARGIN * width and \
            (p99 - p1) >= 0.05 * width
        checks.append({"check": "intensity", "inside": inside, "detail": (
            f"intensities (1st-99th percentile {p1:.4g} to {p99:.4g}) "
            f"{'within' if inside else 'far from'} the training envelope {low:.4g} to {high:.4g}")})
    verdict = all(c["inside"] for c in checks) if checks else None
    return {"inside": verdict, "checks": checks, **({"source": domain.source} if domain.source else {})}


def _percentiles(image: sitk.Image) -> tuple[float, float]:
    array = sitk.GetArrayViewFromImage(image)
    steps = tuple(max(1, n // _SAMPLES_PER_AXIS) for n in array.shape)
    sample = np.asarray(array[tuple(slice(None, None, s) for s in steps)], dtype=np.float64)
    p1, p99 = np.percentile(sample, [1, 99])
    return float(p1), float(p99)


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
