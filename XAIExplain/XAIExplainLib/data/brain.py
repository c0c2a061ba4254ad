"""Synthetic skull-stripped T1 brain MRI with tumour-like lesions, on real anatomy.

The anatomy is the MNI152 ICBM 2009a symmetric T1 template and its grey/white-matter probability maps
(Fonov et al., NeuroImage 2011; Copyright (C) 1993–2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University — see ``Resources/SampleData/MNI152-LICENSE.txt``),
as shipped inside the ``nilearn`` wheel. Each case is made by:

1. resampling the template onto a new grid (in-plane 1.8–2.2 mm, slices 2–3 mm) through a random
   affine transform composed with a cubic B-spline free-form deformation (Rueckert et al., IEEE TMI
   1999) — an elastic deformation of the anatomy;
2. painting 0–2 lesions (5–25 mm equivalent diameter, one in ten under 8 mm; lobulated ellipsoids) inside
   grey/white matter, as they look on a contrast-enhanced T1: solid enhancing (55 %) or ring-enhancing
   with a necrotic core (45 %), of varied enhancement; optionally with a hypointense oedema halo (not
   part of the mask); about one lesion in five is subtle (reduced contrast). Non-enhancing (T1-dark)
   lesions are not generated: next to grey matter and CSF the small demo networks could not learn them
   within their CPU training budget;
3. a gamma contrast change, a smooth multiplicative bias field (the N3 model, Sled et al. 1998), a
   small blur (resolution loss), Rician noise (Gudbjartsson & Patz 1995), then skull stripping by
   the deformed brain mask (background exactly 0) and scaling to int16.

About 45 % of the cases have no lesion.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .fields import polynomial_bias, random_affine, random_bspline, rician_noise
from .records import describe_lesions
from .shapes import irregular_blob, paint_lesion, partial_volume

__all__ = ["template_paths", "make_brain_case", "LESION_FREE_FRACTION"]

LESION_FREE_FRACTION = 0.45
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Template intensities (0–255 scale) of white matter, grey matter and CSF.
_WM, _GM, _CSF = 210.0, 160.0, 75.0


def template_paths() -> dict[str, str]:
    """Paths of the MNI152 2009a T1, GM and WM maps in the installed nilearn package."""
    import nilearn

    folder = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    return {key: os.path.join(folder, name) for key, name in _TEMPLATE_FILES.items()}


@functools.lru_cache(maxsize=1)
def _template() -> sitk.Image:
    """T1, GM and WM maps as one 3-component float image, lightly smoothed against aliasing at 2 mm."""
    paths = template_paths()
    channels = [
        sitk.SmoothingRecursiveGaussian(sitk.Cast(sitk.ReadImage(paths[key]), sitk.sitkFloat32), 0.7)
        for key in ("t1", "gm", "wm")
    ]
    return sitk.Compose(channels)


def _output_grid(rng: np.random.Generator, template: sitk.Image) -> sitk.Image:
    """A new acquisition grid over the template's field of view: 1.8–2.2 mm in-plane, 2–3 mm slices."""
    in_plane = float(rng.uniform(1.8, 2.2))
    spacing = np.array([in_plane, in_plane, float(rng.uniform(2.0, 3.0))])
    extent = np.asarray(template.GetSpacing()) * (np.asarray(template.GetSize()) - 1)
    size = np.ceil(extent / spacing).astype(int) + 1
    direction = np.asarray(template.GetDirection()).reshape(3, 3)
    centre = np.asarray(
        template.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in template.GetSize()])
    ) + rng.uniform(-5.0, 5.0, 3)
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _deformed_anatomy(rng: np.random.Generator, grid: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (0–255), tissue probability (GM+WM, 0–1) and brain mask on ``grid`` after a random deformation."""
    template = _template()
    centre = template.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in template.GetSize()])
    transform = sitk.CompositeTransform(
        [random_affine(rng, centre), random_bspline(rng, template, mesh_size=4, displacement_std_mm=3.0)]
    )
    # The deformation is smooth (control points ~50 mm apart): sample it as a displacement field every
    # 6 mm and interpolate linearly, which is much faster than evaluating the B-spline at every voxel.
    coarse_spacing = [6.0, 6.0, 6.0]
    coarse_size = [int(np.ceil(s * sp / 6.0)) + 2 for s, sp in zip(grid.GetSize(), grid.GetSpacing())]
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    coarse_origin = np.asarray(grid.GetOrigin()) - direction @ np.full(3, 6.0)
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, coarse_size, coarse_origin.tolist(), coarse_spacing, grid.GetDirection()
    )
    transform = sitk.DisplacementFieldTransform(field)
    resampled = sitk.Resample(template, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    array = sitk.GetArrayFromImage(resampled)  # (z, y, x, 3)
    t1 = array[..., 0]
    tissue = np.clip((array[..., 1] + array[..., 2]) / 255.0, 0.0, 1.0)
    brain = ndimage.binary_fill_holes(t1 > 20.0)
    return t1.astype(np.float32), tissue.astype(np.float32), brain


def _lesion_count(rng: np.random.Generator, lesions: Optional[bool]) -> int:
    """0 with probability ``LESION_FREE_FRACTION`` (or always / never when ``lesions`` forces it), else 1–2."""
    free = rng.random() < LESION_FREE_FRACTION
    count = 1 if rng.random() < 0.7 else 2
    if lesions is False or (lesions is None and free):
        return 0
    return count


def _paint_lesions(
    rng: np.random.Generator, t1: np.ndarray, tissue: np.ndarray, brain: np.ndarray, spacing_zyx: np.ndarray, count: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Paint ``count`` lesions into ``t1`` (in place); return the label mask and each lesion's recipe."""
    mask = np.zeros(t1.shape, dtype=np.uint8)
    depth_mm = ndimage.distance_transform_edt(brain, sampling=spacing_zyx)
    recipes: list[dict[str, Any]] = []
    centres: list[tuple[np.ndarray, float]] = []
    voxel_mm = float(np.mean(spacing_zyx))
    for label in range(1, count + 1):
        diameter = float(rng.uniform(5.0, 8.0) if rng.random() < 0.1 else rng.uniform(8.0, 25.0))
        radius = diameter / 2.0
        candidates = np.argwhere((tissue > 0.6) & (depth_mm > radius + 4.0))
        if candidates.size == 0:
            break
        for _ in range(50):
            centre = candidates[rng.integers(len(candidates))].astype(float)
            if all(np.linalg.norm((centre - c) * spacing_zyx) > radius + r + 6.0 for c, r in centres):
                break
        centres.append((centre, radius))
        kind = str(rng.choice(["enhancing", "ring"], p=[0.55, 0.45]))
        subtle = bool(rng.random() < 0.2)
        strength = float(rng.uniform(0.45, 0.6)) if subtle else 1.0
        blob = irregular_blob(rng, t1.shape, spacing_zyx, centre, radius, elongation=0.25,
                              roughness=float(rng.uniform(0.05, 0.3)), extent=2.0)
        region = t1[blob.box]
        inside = partial_volume(blob.rho, radius, voxel_mm)
        if rng.random() < 0.5:  # vasogenic oedema: T1-hypointense halo around the lesion
            halo_extent = float(rng.uniform(1.3, 1.8))
            halo = np.clip((halo_extent - blob.rho) / (halo_extent - 1.0), 0.0, 1.0) * (1.0 - inside)
            region *= 1.0 - float(rng.uniform(0.1, 0.2)) * strength * halo
        if kind == "enhancing":
            target = np.full(region.shape, _WM * float(rng.uniform(1.25, 1.6)), dtype=np.float32)
        elif kind == "ring":
            rim_value = _WM * float(rng.uniform(1.3, 1.6))
            core_value = float(rng.uniform(60.0, 100.0))
            rim_start = float(rng.uniform(0.5, 0.7))
            target = np.where(blob.rho > rim_start, rim_value, core_value).astype(np.float32)
        # Subtle lesions move only part of the way from the tissue intensity towards the lesion's.
        target = region + strength * (target - region)
        inside *= brain[blob.box]
        paint_lesion(region, target, inside, mask[blob.box], label)
        recipes.append({"kind": kind, "subtle": subtle, "nominal_diameter_mm": diameter})
    return mask, recipes


def make_brain_case(
    rng: np.random.Generator, lesions: Optional[bool] = None
) -> tuple[sitk.Image, sitk.Image, dict[str, Any]]:
    """One synthetic T1 case: ``(image int16, mask uint8, info)`` drawn from ``rng``.

    Anatomy, lesions and acquisition draw from three independent child generators, so forcing
    ``lesions`` (``True``: at least one, ``False``: none) gives the lesion-free or lesion-bearing *twin*
    of the same case — same anatomy, same acquisition — which is what counterfactual training pairs need.
    """
    anatomy_rng, lesion_rng, rng = rng.spawn(3)
    grid = _output_grid(anatomy_rng, _template())
    t1, tissue, brain = _deformed_anatomy(anatomy_rng, grid)
    spacing_zyx = np.asarray(grid.GetSpacing())[::-1]
    mask, recipes = _paint_lesions(lesion_rng, t1, tissue, brain, spacing_zyx, _lesion_count(lesion_rng, lesions))

    gamma = float(rng.uniform(0.75, 1.35))
    image = np.clip(t1 / 255.0, 0.0, None) ** gamma
    image *= polynomial_bias(rng, image.shape, degree=2, strength=0.12)
    blur_mm = float(rng.uniform(0.0, 1.2))
    if blur_mm > 0.1:
        image = ndimage.gaussian_filter(image, blur_mm / spacing_zyx)
    noise_sigma = float(rng.uniform(0.01, 0.04))
    image = rician_noise(rng, image.astype(np.float32), noise_sigma)
    scale = float(rng.uniform(800.0, 1600.0))
    image = np.where(brain, np.clip(np.round(image * scale), 1, 32000), 0).astype(np.int16)
    mask[~brain] = 0

    image_sitk = sitk.GetImageFromArray(image)
    image_sitk.CopyInformation(grid)
    mask_sitk = sitk.GetImageFromArray(mask)
    mask_sitk.CopyInformation(grid)
    lesions = describe_lesions(mask_sitk, recipes)
    info = {
        "kind": "brain-mri",
        "modality": "MR",
        "label": int(bool(lesions)),
        "lesions": lesions,
        "acquisition": {"gamma": gamma, "blur_mm": blur_mm, "noise_sigma": noise_sigma, "scale": scale,
                        "spacing_mm": list(grid.GetSpacing())},
    }
    return image_sitk, mask_sitk, info
