"""Procedural chest CT phantom in Hounsfield units with 0–3 lung nodules.

Built analytically on the acquisition grid (DICOM-like LPS geometry, identity direction; in-plane
2.0–2.5 mm, slices 3–5 mm), in the spirit of the XCAT / 4D NCAT thorax phantoms (Segars et al., Med.
Phys. 2010) but far simpler:

* body: elliptical cross-section with subcutaneous fat (≈ −100 HU) and a muscle wall (≈ +45 HU);
* skeleton: slanted ribs, sternum, vertebral bodies with discs, spinal canal and posterior elements;
* mediastinum: fat, heart, ascending and descending aorta, trachea and main bronchi (air);
* lungs: two apex-rounded volumes with diaphragmatic domes (right higher), parenchyma near −850 HU with
  a gravity-dependent gradient, and branching vessel trees (recursive bifurcation, radius × 0.72 per
  generation — close to Murray's law, 2^(-1/3)) drawn with partial-volume edges;
* nodules (4–20 mm): solid, part-solid (ground-glass halo around a solid core) or spiculated
  (solid core with thin radiating spicules), placed inside the lungs away from the hila;
* acquisition: a small Gaussian blur (system resolution and slice profile) and correlated Gaussian
  noise whose standard deviation follows the dose as ``σ ∝ 1/sqrt(dose)``.

About 45 % of the cases have no nodule.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .fields import smooth_noise
from .records import describe_lesions
from .shapes import irregular_blob, paint_lesion, partial_volume, segment_distance

__all__ = ["make_chest_case", "LESION_FREE_FRACTION"]

LESION_FREE_FRACTION = 0.45
FIELD_OF_VIEW_MM = (360.0, 300.0, 260.0)  # x (right-left), y (anterior-posterior), z (inferior-superior)


class _Grid:
    """Millimetre coordinates of the voxel centres relative to the volume centre, broadcastable (z, y, x)."""

    def __init__(self, size_xyz: np.ndarray, spacing_xyz: np.ndarray) -> None:
        self.size = size_xyz
        self.spacing = spacing_xyz
        self.shape = tuple(int(s) for s in size_xyz[::-1])
        axes = [(np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(size_xyz, spacing_xyz)]
        self.x = axes[0].astype(np.float32)[None, None, :]  # + towards patient left
        self.y = axes[1].astype(np.float32)[None, :, None]  # + towards posterior
        self.z = axes[2].astype(np.float32)[:, None, None]  # + towards superior

    def index_of(self, point_xyz: np.ndarray) -> np.ndarray:
        """Continuous (z, y, x) index of a point given in centre-relative mm (x, y, z)."""
        return (np.asarray(point_xyz) / self.spacing + (self.size - 1) / 2.0)[::-1]


def _ellipse(x: np.ndarray, y: np.ndarray, a: Any, b: Any) -> np.ndarray:
    return (x / a) ** 2 + (y / b) ** 2


def _anatomy(rng: np.random.Generator, g: _Grid) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """HU volume without vessels and nodules, the lung mask and the anatomical parameters drawn."""
    a, b = float(rng.uniform(140.0, 170.0)), float(rng.uniform(100.0, 120.0))
    fat, muscle = float(rng.uniform(8.0, 25.0)), float(rng.uniform(8.0, 14.0))
    taper = 1.0 - 0.06 * (g.z / 130.0) ** 2
    body = (_ellipse(g.x, g.y, a * taper, b * taper) <= 1.0) & (g.y <= 0.9 * b)
    inner = _ellipse(g.x, g.y, (a - fat) * taper, (b - fat) * taper) <= 1.0
    a_in, b_in = a - fat - muscle, b - fat - muscle
    cavity_r = np.sqrt(_ellipse(g.x, g.y, a_in * taper, b_in * taper))
    hu = np.full(g.shape, -1000.0, dtype=np.float32)
    hu[np.broadcast_to(body, g.shape)] = -100.0
    hu[np.broadcast_to(body & inner, g.shape)] = 45.0
    cavity = body & (cavity_r <= 1.0)
    hu[np.broadcast_to(cavity, g.shape)] = -60.0  # mediastinal fat as the default filling

    # Heart, aorta.
    heart_c = np.array([rng.uniform(5.0, 25.0), rng.uniform(-40.0, -20.0), rng.uniform(-70.0, -45.0)])
    heart_r = np.array([rng.uniform(50.0, 60.0), rng.uniform(40.0, 48.0), rng.uniform(45.0, 55.0)])
    heart_q = ((g.x - heart_c[0]) / heart_r[0]) ** 2 + ((g.y - heart_c[1]) / heart_r[1]) ** 2 + ((g.z - heart_c[2]) / heart_r[2]) ** 2
    hu[heart_q <= 1.0] = 40.0
    spine_y = b_in - 22.0
    desc = (_ellipse(g.x - 22.0, g.y - (spine_y - 22.0), 12.0, 12.0) <= 1.0) & (g.z < 45.0) & (g.z > -130.0)
    asc = (_ellipse(g.x - 5.0, g.y + 18.0, 14.0, 14.0) <= 1.0) & (g.z < 45.0) & (g.z > heart_c[2])
    hu[np.broadcast_to(desc | asc, g.shape)] = 40.0

    # Spine: vertebral bodies (cortical rim, discs), canal, posterior elements.
    vb_r = np.sqrt(_ellipse(g.x, g.y - spine_y, 18.0, 16.0))
    disc_phase = float(rng.uniform(0.0, 30.0))
    disc = np.mod(g.z + disc_phase, 30.0) < 6.0
    hu[np.broadcast_to(vb_r <= 1.0, g.shape)] = 250.0
    hu[np.broadcast_to((vb_r > 0.8) & (vb_r <= 1.0), g.shape)] = 550.0
    hu[(vb_r <= 1.0) & disc] = 80.0
    canal_y = spine_y + 26.0
    canal_r = np.sqrt(_ellipse(g.x, g.y - canal_y, 8.0, 8.0))
    posterior = ((canal_r > 1.0) & (canal_r <= 1.8) & (g.y > spine_y + 14.0)) | (
        (np.abs(g.x) < 4.0) & (g.y > canal_y + 8.0) & (g.y < canal_y + 38.0)) & body
    hu[np.broadcast_to(posterior, g.shape) & ~disc] = 450.0
    hu[np.broadcast_to(canal_r <= 1.0, g.shape)] = 20.0

    # Lungs.
    lung = np.zeros(g.shape, dtype=bool)
    lungs = []
    for side in (-1.0, 1.0):  # -1: patient right (LPS x < 0), +1: left
        cx, cy = side * float(rng.uniform(62.0, 75.0)), float(rng.uniform(0.0, 10.0))
        ax, ay = float(rng.uniform(48.0, 58.0)), float(rng.uniform(70.0, 84.0))
        top = float(rng.uniform(95.0, 120.0))
        base = float(rng.uniform(-120.0, -100.0)) + (12.0 if side < 0 else 0.0)
        dome = float(rng.uniform(25.0, 40.0))
        rounding = np.sqrt(np.clip((top - g.z) / 50.0, 1e-3, 1.0))
        section = _ellipse(g.x - cx, g.y - cy, ax * rounding, ay * rounding)
        floor = base + dome * np.clip(1.0 - _ellipse(g.x - cx, g.y - cy, ax, ay), 0.0, 1.0)
        lung |= (section <= 1.0) & (g.z <= top) & (g.z >= floor)
        lungs.append({"centre_xy": (cx, cy), "axes": (ax, ay), "top": top, "base": base})
    keep_out = (heart_q <= 1.25) | (vb_r <= 1.4) | np.broadcast_to(np.abs(g.x) < 16.0, g.shape)
    keep_out |= np.broadcast_to(_ellipse(g.x - 22.0, g.y - (spine_y - 22.0), 18.0, 18.0) <= 1.0, g.shape)
    lung &= np.broadcast_to(cavity_r <= 0.94, g.shape) & ~keep_out
    parenchyma = float(rng.uniform(-870.0, -830.0)) + 35.0 * np.clip(g.y / 80.0, -1.0, 1.0)
    hu = np.where(lung, parenchyma, hu).astype(np.float32)

    # Trachea and main bronchi (air), carina at z ~ 20 mm.
    carina = np.array([0.0, -5.0, float(rng.uniform(10.0, 30.0))])
    trachea = (_ellipse(g.x, g.y + 5.0, 8.0, 7.0) <= 1.0) & (g.z > carina[2]) & (g.z < 130.0)
    hu[np.broadcast_to(trachea, g.shape)] = -1000.0
    hila = [np.array([side * 45.0, 5.0, carina[2] - 20.0]) for side in (-1.0, 1.0)]
    for hilum in hila:
        _paint_tube(hu, g, carina, hilum, 6.0, -1000.0, None)

    # Ribs (sloping down anteriorly) and sternum, in the inner part of the chest wall.
    period, thickness = float(rng.uniform(24.0, 28.0)), float(rng.uniform(8.0, 10.0))
    phase = float(rng.uniform(0.0, period))
    wall = (cavity_r > 1.0) & (cavity_r <= 1.0 + 10.0 / b_in) & body
    rib = wall & (np.mod(g.z - 0.3 * g.y + phase, period) < thickness) & ~((np.abs(g.x) < 30.0) & (g.y < 0))
    sternum = wall & (np.abs(g.x) < 15.0) & (g.y < 0) & (g.z < 80.0) & (g.z > -90.0)
    hu[rib | sternum] = 550.0
    hu[np.broadcast_to(~body, g.shape)] = -1000.0
    params = {"body_axes_mm": [a, b], "fat_mm": fat, "lungs": lungs, "hila_mm": [h.tolist() for h in hila]}
    return hu, lung, params


def _paint_tube(hu: np.ndarray, g: _Grid, start: np.ndarray, end: np.ndarray, radius: float, value: float,
                where: np.ndarray | None) -> None:
    """Paint a cylinder with partial-volume edges between two points (centre-relative mm, x y z)."""
    voxel = float(g.spacing.mean())
    lo = g.index_of(np.minimum(start, end) - radius - voxel)
    hi = g.index_of(np.maximum(start, end) + radius + voxel)
    box = tuple(slice(max(0, int(np.floor(min(l, h)))), min(n, int(np.ceil(max(l, h))) + 1))
                for l, h, n in zip(lo, hi, g.shape))
    if any(s.stop <= s.start for s in box):
        return
    offsets = np.meshgrid(*(((np.arange(s.start, s.stop) - (n - 1) / 2.0) * sp)
                            for s, n, sp in zip(box, g.shape, g.spacing[::-1])), indexing="ij")
    distance = segment_distance(tuple(offsets), np.asarray(start)[::-1], np.asarray(end)[::-1])
    membership = np.clip((radius - distance) / voxel + 0.5, 0.0, 1.0) * min(1.0, 2.0 * radius / voxel)
    if where is not None:
        membership = membership * where[box]
    region = hu[box]
    region[...] = region * (1.0 - membership) + value * membership


def _vessel_tree(rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, g: _Grid, root: np.ndarray,
                 direction: np.ndarray, radius: float, length: float) -> int:
    """Recursively bifurcating vessel tree painted inside the lungs; returns the number of segments."""
    stack = [(root, direction / np.linalg.norm(direction), radius, length)]
    count = 0
    while stack:
        start, heading, r, l = stack.pop()
        end = start + heading * l
        _paint_tube(hu, g, start, end, r, 40.0, lung)
        count += 1
        if r * 0.72 < 0.6:
            continue
        for sign in (-1.0, 1.0):
            axis = np.cross(heading, rng.normal(size=3))
            axis /= np.linalg.norm(axis) or 1.0
            angle = np.deg2rad(rng.uniform(20.0, 40.0)) * sign
            # Rodrigues' rotation of the heading about a random perpendicular axis.
            turned = heading * np.cos(angle) + np.cross(axis, heading) * np.sin(angle)
            stack.append((end, turned / np.linalg.norm(turned), r * 0.72, l * float(rng.uniform(0.7, 0.85))))
    return count


def _nodules(rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, g: _Grid, hila: list[np.ndarray],
             count: int, small_fraction: float = 0.0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Paint ``count`` nodules in the lungs; return the label mask and the recipe of each.

    ``small_fraction``: that share of the nodules is redrawn at 6-10 mm (training sets that show more of
    the sizes a model misses; one extra draw per nodule, so the default sets are unchanged).
    """
    mask = np.zeros(g.shape, dtype=np.uint8)
    spacing_zyx = g.spacing[::-1]
    voxel = float(g.spacing.mean())
    depth = ndimage.distance_transform_edt(lung, sampling=spacing_zyx)
    recipes: list[dict[str, Any]] = []
    placed: list[tuple[np.ndarray, float]] = []
    for label in range(1, count + 1):
        diameter = float(rng.uniform(4.0, 6.0) if rng.random() < 0.1 else rng.uniform(6.0, 20.0))
        if small_fraction and rng.random() < small_fraction:
            diameter = float(rng.uniform(6.0, 10.0))
        radius = diameter / 2.0
        candidates = np.argwhere(depth > radius + 3.0)
        if candidates.size == 0:
            break
        for _ in range(100):
            centre = candidates[rng.integers(len(candidates))].astype(float)
            centre_mm = (centre - (np.asarray(g.shape) - 1) / 2.0) * spacing_zyx  # (z, y, x)
            far_from_hila = all(np.linalg.norm(centre_mm - h[::-1]) > 45.0 for h in hila)
            apart = all(np.linalg.norm((centre - c) * spacing_zyx) > radius + r + 8.0 for c, r in placed)
            if far_from_hila and apart:
                break
        placed.append((centre, radius))
        kind = str(rng.choice(["solid", "part-solid", "spiculated"], p=[0.45, 0.3, 0.25]))
        blob = irregular_blob(rng, g.shape, spacing_zyx, centre, radius, elongation=0.15,
                              roughness=float(rng.uniform(0.05, 0.25)), extent=2.5)
        region = hu[blob.box]
        inside = partial_volume(blob.rho, radius, voxel)
        solid_hu = float(rng.uniform(0.0, 60.0))
        if kind == "part-solid":
            ggo = float(rng.uniform(-650.0, -450.0))
            core = float(rng.uniform(0.3, 0.6))
            core_membership = partial_volume(blob.rho / core, radius * core, voxel)
            target = ggo + (solid_hu - ggo) * core_membership
        else:
            target = np.full(region.shape, solid_hu, dtype=np.float32)
        if kind == "spiculated":
            centre_local = np.zeros(3)
            for _ in range(int(rng.integers(6, 15))):
                heading = rng.normal(size=3)
                heading /= np.linalg.norm(heading)
                tip = heading * radius * (1.0 + float(rng.uniform(0.6, 1.4)))
                spike_r = float(rng.uniform(0.6, 1.0))
                distance = segment_distance(blob.offsets_mm, centre_local, tip)
                spike = np.clip((spike_r - distance) / voxel + 0.5, 0.0, 1.0) * min(1.0, 2.0 * spike_r / voxel)
                spike *= lung[blob.box]
                region[...] = region * (1.0 - spike) + solid_hu * spike
        paint_lesion(region, target, inside, mask[blob.box], label)
        recipes.append({"kind": kind, "nominal_diameter_mm": diameter, "solid_hu": solid_hu})
    return mask, recipes


def make_chest_case(
    rng: np.random.Generator, lesions: Optional[bool] = None, small_nodule_fraction: float = 0.0
) -> tuple[sitk.Image, sitk.Image, dict[str, Any]]:
    """One synthetic chest CT: ``(image int16 HU, mask uint8, info)`` drawn from ``rng``.

    Anatomy, nodules and acquisition draw from three independent child generators; ``lesions`` forces
    at least one nodule (``True``) or none (``False``) to make the twin of the same case;
    ``small_nodule_fraction`` redraws that share of the nodules at 6-10 mm (see :func:`_nodules`).
    """
    rng, lesion_rng, acquisition_rng = rng.spawn(3)
    in_plane = float(rng.uniform(2.0, 2.5))
    thickness = float(rng.choice([3.0, 4.0, 5.0]))
    spacing = np.array([in_plane, in_plane, thickness])
    size = np.round(np.asarray(FIELD_OF_VIEW_MM) / spacing).astype(int)
    g = _Grid(size, spacing)
    hu, lung, params = _anatomy(rng, g)

    hila = [np.asarray(h) for h in params["hila_mm"]]
    segments = 0
    for hilum in hila:
        side = np.sign(hilum[0])
        for vertical in (1.0, -1.0):  # an upper-lobe and a lower-lobe tree from each hilum
            heading = np.array([side * 0.8, rng.uniform(-0.3, 0.3), vertical * rng.uniform(0.5, 0.9)])
            segments += _vessel_tree(rng, hu, lung, g, hilum, heading, float(rng.uniform(3.5, 4.5)),
                                     float(rng.uniform(28.0, 36.0)))

    free = lesion_rng.random() < LESION_FREE_FRACTION
    count = int(lesion_rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    if lesions is False or (lesions is None and free):
        count = 0
    mask, recipes = _nodules(lesion_rng, hu, lung, g, hila, count, small_nodule_fraction)
    rng = acquisition_rng

    hu = ndimage.gaussian_filter(hu, (0.4, 0.5, 0.5))
    dose = float(rng.uniform(0.15, 1.0))
    noise_sigma = 12.0 / np.sqrt(dose)
    hu = hu + noise_sigma * smooth_noise(rng, hu.shape, (0.3, 0.8, 0.8))
    array = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    origin_shift = rng.uniform(-5.0, 5.0, 3)
    origin = -(size - 1) / 2.0 * spacing + origin_shift + np.array([0.0, 0.0, -150.0])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(np.eye(3).flatten().tolist())
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    lesions = describe_lesions(mask_image, recipes)
    info = {
        "kind": "chest-ct",
        "modality": "CT",
        "label": int(bool(lesions)),
        "lesions": lesions,
        "acquisition": {"spacing_mm": spacing.tolist(), "dose_fraction": dose, "noise_sigma_hu": noise_sigma,
                        "vessel_segments": segments},
        "anatomy": params,
    }
    return image, mask_image, info
