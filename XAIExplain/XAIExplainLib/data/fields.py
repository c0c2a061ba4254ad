"""Random smooth fields and transforms shared by the case generators.

Every function takes a :class:`numpy.random.Generator` so a case is reproducible from its seed:
the same generator state gives byte-identical arrays.

* Smooth random fields: Gaussian-filtered white noise, rescaled to unit standard deviation.
* Bias field: a smooth multiplicative intensity inhomogeneity, modelled as in N3 (Sled, Zijdenbos &
  Evans, IEEE TMI 1998) as ``exp`` of a low-order polynomial of the normalised coordinates.
* Elastic deformation: a cubic B-spline free-form deformation with random control-point displacements
  (Rueckert et al., IEEE TMI 1999), composed with a small random affine transform — the 3-D form of
  the elastic distortions of Simard, Steinkraus & Platt (ICDAR 2003).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = [
    "smooth_noise",
    "polynomial_bias",
    "random_rotation",
    "random_affine",
    "random_bspline",
    "rician_noise",
]


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float | Sequence[float]) -> np.ndarray:
    """White Gaussian noise low-pass filtered with a Gaussian of ``sigma_vox``; zero mean, unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox, mode="wrap")
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def polynomial_bias(rng: np.random.Generator, shape: Sequence[int], degree: int = 2, strength: float = 0.15) -> np.ndarray:
    """Multiplicative bias field ``exp(p(x, y, z))`` with a random polynomial ``p`` of ``degree``.

    Coordinates are normalised to [-1, 1] on each axis; coefficients are ``N(0, strength)``, so the
    field stays within roughly ``exp(±2·strength)`` over the volume.
    """
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    log_field = np.zeros(tuple(shape), dtype=np.float32)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                if i + j + k == 0:
                    continue
                log_field += float(rng.normal(0.0, strength)) * grids[0] ** i * grids[1] ** j * grids[2] ** k
    return np.exp(log_field).astype(np.float32)


def random_rotation(rng: np.random.Generator, max_degrees: float | Sequence[float] = 180.0) -> np.ndarray:
    """A 3x3 rotation matrix from three Euler angles, each uniform in ``±max_degrees`` (per axis)."""
    limits = np.broadcast_to(np.asarray(max_degrees, dtype=float), (3,))
    angles = np.deg2rad(rng.uniform(-limits, limits))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i] = rot[j, j] = c
        rot[i, j], rot[j, i] = -s, s
        matrix = rot @ matrix
    return matrix


def random_affine(
    rng: np.random.Generator,
    centre: Sequence[float],
    max_rotation_deg: float = 6.0,
    scale_range: tuple[float, float] = (0.92, 1.08),
    anisotropy: float = 0.03,
    max_translation_mm: float = 4.0,
) -> sitk.AffineTransform:
    """Small random rotation, scaling and translation about ``centre`` (physical, mm)."""
    scale = rng.uniform(*scale_range) * (1.0 + rng.uniform(-anisotropy, anisotropy, 3))
    matrix = random_rotation(rng, max_rotation_deg) @ np.diag(scale)
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(c) for c in centre])
    transform.SetMatrix(matrix.flatten().tolist())
    transform.SetTranslation(rng.uniform(-max_translation_mm, max_translation_mm, 3).tolist())
    return transform


def random_bspline(
    rng: np.random.Generator, reference: sitk.Image, mesh_size: int = 4, displacement_std_mm: float = 3.0
) -> sitk.BSplineTransform:
    """Cubic B-spline free-form deformation over ``reference``'s domain, control points ``N(0, std)``."""
    transform = sitk.BSplineTransformInitializer(reference, [mesh_size] * 3, 3)
    count = len(transform.GetParameters())
    transform.SetParameters(rng.normal(0.0, displacement_std_mm, count).tolist())
    return transform


def rician_noise(rng: np.random.Generator, magnitude: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude-MRI noise: ``|m + n1 + i·n2|`` with ``n1, n2 ~ N(0, sigma)`` (Gudbjartsson & Patz, 1995)."""
    real = magnitude + rng.normal(0.0, sigma, magnitude.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, magnitude.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
