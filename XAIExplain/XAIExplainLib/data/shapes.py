"""Rasterising lesion-like shapes on a voxel grid, with partial-volume edges.

Shapes are described in millimetres and rasterised in a box around their centre only, so painting a
lesion costs little however large the volume. Arrays are in SimpleITK's ``(z, y, x)`` order and
``spacing`` is given in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .fields import random_rotation, smooth_noise

__all__ = ["Blob", "irregular_blob", "partial_volume", "segment_distance", "paint_lesion"]


@dataclass
class Blob:
    """A shape rasterised in a box: ``rho`` < 1 inside (1 on the surface), ``box`` slices the volume."""

    box: tuple[slice, slice, slice]
    rho: np.ndarray
    radius_mm: float
    offsets_mm: tuple[np.ndarray, np.ndarray, np.ndarray]


def _box(shape: Sequence[int], centre: Sequence[float], half_vox: Sequence[float]) -> tuple[slice, slice, slice]:
    return tuple(
        slice(max(0, int(np.floor(c - h))), min(int(n), int(np.ceil(c + h)) + 1))
        for c, h, n in zip(centre, half_vox, shape)
    )  # type: ignore[return-value]


def irregular_blob(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    centre_index: Sequence[float],
    radius_mm: float,
    elongation: float = 0.25,
    roughness: float = 0.2,
    extent: float = 2.0,
) -> Blob:
    """A lobulated ellipsoid: random axes ``radius·(1 ± elongation)``, random orientation, and a radius
    modulated by a smooth random field of relative amplitude ``roughness``.

    ``rho`` is the normalised radial coordinate, evaluated in a box of ``extent`` radii around the
    centre so callers can also paint rims (``rho`` near 1) and halos (``rho`` in 1..extent).
    """
    spacing = np.asarray(spacing, dtype=float)
    half = extent * radius_mm * (1.0 + elongation) / spacing + 1
    box = _box(shape, centre_index, half)
    offsets = np.meshgrid(
        *((np.arange(s.start, s.stop) - c) * sp for s, c, sp in zip(box, centre_index, spacing)), indexing="ij"
    )
    axes = radius_mm * (1.0 + rng.uniform(-elongation, elongation, 3))
    rotation = random_rotation(rng, 180.0)
    points = np.stack([o.ravel() for o in offsets])  # (3, N) mm
    local = (rotation @ points) / axes[:, None]
    rho = np.sqrt((local * local).sum(axis=0)).reshape(offsets[0].shape)
    if roughness > 0 and rho.size > 1:
        sigma = np.maximum(radius_mm / spacing / 2.0, 0.5)
        rho = rho / (1.0 + roughness * np.clip(smooth_noise(rng, rho.shape, sigma), -2.5, 2.5))
    return Blob(box, rho.astype(np.float32), float(radius_mm), tuple(offsets))  # type: ignore[arg-type]


def partial_volume(rho: np.ndarray, radius_mm: float, voxel_mm: float) -> np.ndarray:
    """Soft membership of a voxel in ``rho < 1``: a linear ramp one voxel wide across the surface."""
    return np.clip((1.0 - rho) * radius_mm / voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)


def paint_lesion(region: np.ndarray, target: np.ndarray, inside: np.ndarray, mask_region: np.ndarray,
                 label: int) -> None:
    """Blend ``target`` into ``region`` by the soft membership ``inside`` (in place) and give the voxels
    that are at least half inside, and not yet another lesion's, ``label`` in ``mask_region``."""
    region[...] = region * (1.0 - inside) + target * inside
    mask_region[(inside >= 0.5) & (mask_region == 0)] = label


def segment_distance(
    offsets_mm: tuple[np.ndarray, np.ndarray, np.ndarray], start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Distance (mm) from each point (given as mm offsets, ``(z, y, x)`` order) to the segment start→end."""
    points = np.stack(offsets_mm, axis=-1)
    direction = end - start
    length2 = float(direction @ direction) or 1e-9
    t = np.clip(((points - start) @ direction) / length2, 0.0, 1.0)
    nearest = start + t[..., None] * direction
    return np.sqrt(((points - nearest) ** 2).sum(axis=-1)).astype(np.float32)
