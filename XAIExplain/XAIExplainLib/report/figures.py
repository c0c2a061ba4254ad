"""Key slices as PNG pictures: axial, coronal and sagittal through the evidence peak, the image in grey
with a map on top and outlines (top region, lesion mask, model segmentation).

Radiological display convention, as in 3D Slicer and every reading room: the patient's right is on
the left of axial and coronal pictures, anterior is up in axial pictures, superior up in coronal and
sagittal ones, anterior on the left of sagittal ones. Pixels are square in millimetres.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap, to_hex  # noqa: E402

from ..audiences.presets import LESION_OUTLINE  # noqa: E402

__all__ = ["Overlay", "Outline", "key_slices_png", "RADIOLOGICAL_CAPTION", "OUTLINE_COLOURS"]

RADIOLOGICAL_CAPTION = ("Radiological convention: the patient's right is on the left of each picture "
                        "(letters at the edges: R/L right/left, A/P front/back, S/I up/down).")
#: Outline colours, the same in every report: top evidence region, given lesion mask, model segmentation.
OUTLINE_COLOURS = {"evidence": "#ffd400", "lesion": to_hex(LESION_OUTLINE["rgb"]), "segmentation": "#ff4fd8"}
_EDGE_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


@dataclass
class Overlay:
    """A map drawn over the image: ``values`` on the image grid; voxels below ``hide_below`` are not drawn.

    ``colormap``: a matplotlib name, or ``"single:<colour>"`` for one plain colour.
    """

    values: sitk.Image
    colormap: str = "inferno"
    vmin: float = 0.0
    vmax: float = 1.0
    hide_below: Optional[float] = None
    alpha: float = 0.6
    colorbar: Optional[str] = None  # label of a colour bar, or None for none


@dataclass
class Outline:
    """The edge of a mask (non-zero voxels), in one colour."""

    mask: sitk.Image
    colour: str
    width: float = 1.4


@dataclass
class _Plane:
    view: str
    image: np.ndarray
    layers: list = field(default_factory=list)
    extent: tuple = ()
    title: str = ""


def key_slices_png(image: sitk.Image, peak_lps: Sequence[float], views: Sequence[str], window: tuple[float, float],
                   overlay: Optional[Overlay] = None, outlines: Sequence[Outline] = (), title: str = "",
                   plain_letters: bool = False, panel_inches: float = 3.6) -> bytes:
    """One row of pictures (one per view) through ``peak_lps`` (LPS mm), as PNG bytes.

    ``window``: grey-level range (low, high) of the image. ``plain_letters``: "Right"/"Left" words for
    lay readers instead of R/L/A/P/S/I.
    """
    base = sitk.DICOMOrient(image, "LPS")
    index = base.TransformPhysicalPointToIndex(tuple(float(v) for v in peak_lps))
    index = [min(max(int(v), 0), n - 1) for v, n in zip(index, base.GetSize())]
    spacing = base.GetSpacing()
    numbers = _slice_numbers(image, peak_lps)
    volumes = {"image": sitk.GetArrayFromImage(base)}
    if overlay is not None:
        volumes["overlay"] = sitk.GetArrayFromImage(sitk.DICOMOrient(overlay.values, "LPS"))
    for n, outline in enumerate(outlines):
        volumes[f"outline{n}"] = sitk.GetArrayFromImage(sitk.DICOMOrient(outline.mask, "LPS")) > 0

    figure, axes = plt.subplots(1, len(views), figsize=(panel_inches * len(views), panel_inches + 0.5),
                                facecolor="black", squeeze=False)
    mappable = None
    for ax, view in zip(axes[0], views):
        planes = {name: _plane(volume, view, index) for name, volume in volumes.items()}
        rows, cols = planes["image"].shape
        row_mm, col_mm = _plane_spacing(view, spacing)
        extent = (0, cols * col_mm, rows * row_mm, 0)
        ax.imshow(planes["image"], cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="bilinear")
        if overlay is not None:
            values = np.ma.masked_less(planes["overlay"], overlay.hide_below) if overlay.hide_below is not None \
                else planes["overlay"]
            mappable = ax.imshow(values, cmap=_colormap(overlay.colormap), vmin=overlay.vmin, vmax=overlay.vmax,
                                 alpha=overlay.alpha, extent=extent, interpolation="nearest")
        x = (np.arange(cols) + 0.5) * col_mm
        y = (np.arange(rows) + 0.5) * row_mm
        for n, outline in enumerate(outlines):
            plane = planes[f"outline{n}"]
            if plane.any():
                ax.contour(x, y, plane.astype(float), levels=[0.5], colors=[outline.colour], linewidths=outline.width)
        _letters(ax, view, extent, plain_letters)
        ax.set_title(view.capitalize() if plain_letters else f"{view.capitalize()} (slice {numbers[view]})",
                     color="white", fontsize=11)
        ax.set_axis_off()
    if overlay is not None and overlay.colorbar and mappable is not None:
        bar = figure.colorbar(mappable, ax=axes[0].tolist(), fraction=0.025, pad=0.01)
        bar.set_label(overlay.colorbar, color="white")
        bar.ax.tick_params(colors="white")
    if title:
        figure.suptitle(title, color="white", fontsize=12)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="black", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _plane(volume: np.ndarray, view: str, index: Sequence[int]) -> np.ndarray:
    """The 2-D picture of ``volume`` (array order k, j, i of an LPS-oriented image) in display orientation."""
    i, j, k = index
    if view == "axial":
        return volume[k]  # rows: anterior -> posterior; columns: right -> left
    if view == "coronal":
        return volume[::-1, j, :]  # rows: superior -> inferior; columns: right -> left
    if view == "sagittal":
        return volume[::-1, :, i]  # rows: superior -> inferior; columns: anterior -> posterior
    raise ValueError(f"unknown view {view!r}")


def _slice_numbers(image: sitk.Image, point_lps: Sequence[float]) -> dict[str, int]:
    """1-based slice numbers in the input's own grid: the index along the input axis closest to each
    view's normal (S for axial, A-P for coronal, R-L for sagittal), as a viewer scrolling the input shows."""
    index = image.TransformPhysicalPointToIndex(tuple(float(v) for v in point_lps))
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    return {view: int(index[int(np.argmax(direction[row]))]) + 1
            for view, row in (("sagittal", 0), ("coronal", 1), ("axial", 2))}


def _plane_spacing(view: str, spacing: Sequence[float]) -> tuple[float, float]:
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def _letters(ax, view: str, extent: tuple, plain: bool) -> None:
    left, right, top, bottom = _EDGE_LETTERS[view]
    if plain:
        left, right = {"R": ("Right", "Left"), "A": ("Front", "Back")}[left]
        top, bottom = "", ""
    width, height = extent[1], extent[2]
    style = dict(color="white", fontsize=10, fontweight="bold")
    ax.text(width * 0.02, height / 2, left, ha="left", va="center", **style)
    ax.text(width * 0.98, height / 2, right, ha="right", va="center", **style)
    if top:
        ax.text(width / 2, height * 0.02, top, ha="center", va="top", **style)
        ax.text(width / 2, height * 0.98, bottom, ha="center", va="bottom", **style)


def _colormap(name: str):
    if name.startswith("single:"):
        return ListedColormap([name.split(":", 1)[1]])
    return plt.get_cmap(name)
