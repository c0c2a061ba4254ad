"""What every training script shares: the model-input contract, data sets, metrics and bundle writing.

:func:`to_model_input` is the preprocessing contract of the engine (``XAIExplainLib.preprocessing``)
written out independently, so the training scripts feed the networks exactly what the product will
and a test can check that the two agree:

1. the image is resampled (linear) onto a grid with the direction of ``xai.input.orientation``
   (``"RAS"``: array axis 0 points to patient Right, 1 Anterior, 2 Superior), spacing
   ``spacing_mm`` and size ``size``, centred on the physical centre of the image's bounding box;
   voxels outside the image take the image's minimum. For segmentation models the grid instead covers
   the whole image (size from its extent, at least ``size``, rounded up to ``divisible_by``);
2. the array is taken in ``(x, y, z)`` order (``GetArrayFromImage(...).transpose(2, 1, 0)``);
3. the intensity normalisation of ``xai.intensity`` is applied to the whole array: ``zscore``
   (``nonzero``: statistics of the voxels above the array's minimum), ``percentile`` (``lower`` …
   ``upper`` percentiles to 0..1, clipped) or ``ct_window`` (``center ± width/2`` HU to 0..1, clipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

__all__ = [
    "ORIENTATION_VECTORS",
    "orientation_matrix",
    "model_grid_for",
    "resample_to_grid",
    "normalise",
    "to_model_input",
    "mask_to_model_grid",
    "seed_everything",
    "roc_auc",
    "dice",
    "sha256_of",
    "write_bundle",
    "Stopwatch",
    "environment",
    "display_path",
]

#: LPS unit vector of each anatomical direction letter.
ORIENTATION_VECTORS = {
    "R": (-1.0, 0.0, 0.0), "L": (1.0, 0.0, 0.0),
    "A": (0.0, -1.0, 0.0), "P": (0.0, 1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}


def orientation_matrix(code: str) -> np.ndarray:
    """ITK direction matrix (columns = LPS direction of array axes 0, 1, 2) for a code such as ``"RAS"``."""
    code = code.upper()
    if len(code) != 3 or any(c not in ORIENTATION_VECTORS for c in code):
        raise ValueError(f"'{code}' is not an orientation code such as RAS or LPS.")
    matrix = np.array([ORIENTATION_VECTORS[c] for c in code]).T
    if abs(abs(np.linalg.det(matrix)) - 1.0) > 1e-6:
        raise ValueError(f"Orientation '{code}' names one anatomical axis twice.")
    return matrix


def model_grid_for(image: sitk.Image, xai_meta: Mapping[str, Any]) -> sitk.Image:
    """The empty model grid (float32 image) on which ``image`` is presented to the network."""
    spec = xai_meta["input"]
    direction = orientation_matrix(str(spec.get("orientation", "RAS")))
    spacing = np.asarray(spec["spacing_mm"], dtype=float)
    size = np.asarray(spec["size"], dtype=int)
    if xai_meta.get("task") == "segmentation":
        corners = np.asarray([
            image.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, image.GetSize())])
            for corner in np.ndindex(2, 2, 2)
        ]) @ direction
        extent = corners.max(axis=0) - corners.min(axis=0)
        size = np.maximum(np.ceil(extent / spacing).astype(int) + 1, size)
        divisor = int(spec.get("divisible_by", 1))
        size = (np.ceil(size / divisor) * divisor).astype(int)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((centre - direction @ (spacing * (size - 1) / 2.0)).tolist())
    return grid


def resample_to_grid(image: sitk.Image, grid: sitk.Image, interpolator: int = sitk.sitkLinear,
                     default: Optional[float] = None) -> np.ndarray:
    """``image`` resampled onto ``grid`` as a float32 ``(x, y, z)`` array; outside = image minimum."""
    if default is None:
        default = float(sitk.GetArrayViewFromImage(image).min())
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, sitk.sitkFloat32)
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))


def normalise(array: np.ndarray, intensity: Mapping[str, Any]) -> np.ndarray:
    """Intensity normalisation of a model-grid array as ``xai.intensity`` says (float32 out)."""
    array = np.asarray(array, dtype=np.float32)
    kind = intensity.get("kind", "none")
    if kind == "zscore":
        values = array[array > array.min()] if intensity.get("nonzero", False) else array
        if values.size == 0:
            values = array
        std = float(values.std())
        return ((array - float(values.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
    if kind == "percentile":
        low, high = np.percentile(array, [float(intensity.get("lower", 1.0)), float(intensity.get("upper", 99.0))])
        return np.clip((array - low) / (high - low if high > low else 1.0), 0.0, 1.0).astype(np.float32)
    if kind == "ct_window":
        low = float(intensity["center"]) - float(intensity["width"]) / 2.0
        return np.clip((array - low) / float(intensity["width"]), 0.0, 1.0).astype(np.float32)
    if kind == "none":
        return array
    raise ValueError(f"Unknown intensity normalisation '{kind}'.")


def to_model_input(image: sitk.Image, xai_meta: Mapping[str, Any]) -> np.ndarray:
    """The network input for ``image``: resampled to the model grid, ``(x, y, z)``, normalised.

    Returns a float32 array of shape ``(X, Y, Z)``; add two leading axes to feed the network.
    """
    return normalise(resample_to_grid(image, model_grid_for(image, xai_meta)), xai_meta.get("intensity", {}))


def mask_to_model_grid(mask: sitk.Image, image: sitk.Image, xai_meta: Mapping[str, Any]) -> np.ndarray:
    """Binary lesion mask on the model grid of ``image`` (linear resampling of the 0/1 mask, ≥ 0.5)."""
    binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
    return resample_to_grid(binary, model_grid_for(image, xai_meta), default=0.0) >= 0.5


def seed_everything(seed: int, threads: int = 2) -> torch.Generator:
    """Seed Python, NumPy and torch, use deterministic kernels, cap torch at ``threads`` threads."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve as the Mann–Whitney U statistic (ties count one half)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=int)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("AUC needs at least one positive and one negative case.")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice overlap of two binary arrays (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / total)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_bundle(
    out: Path,
    network_def: Mapping[str, Any],
    network: torch.nn.Module,
    metadata: dict[str, Any],
    model_card: str,
) -> Path:
    """Write the MONAI bundle folder ``out``; fills ``xai.weights_sha256`` and the version fields."""
    import monai

    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    weights = out / "models" / "model.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, weights)
    metadata = dict(metadata)
    metadata["monai_version"] = monai.__version__
    metadata["pytorch_version"] = torch.__version__.split("+")[0]
    metadata["numpy_version"] = np.__version__
    metadata["optional_packages_version"] = {"SimpleITK": sitk.Version.VersionString()}
    metadata["xai"] = dict(metadata["xai"], weights_sha256=sha256_of(weights))
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out / "configs" / "inference.json").write_text(json.dumps({"network_def": dict(network_def)}, indent=2) + "\n", encoding="utf-8")
    (out / "docs" / "README.md").write_text(model_card, encoding="utf-8")
    return out


class Stopwatch:
    """Wall-clock timer that also prints progress lines with the elapsed time."""

    def __init__(self, log: Optional[Callable[[str], None]] = None) -> None:
        self.start = time.perf_counter()
        self.log = log or (lambda message: print(message, flush=True))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        self.log(f"[{self.elapsed:7.1f} s] {message}")


def environment() -> str:
    """One line naming the machine the model was trained on."""
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {threads} thread{'s' if threads > 1 else ''}, torch {torch.__version__}"


def display_path(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (for reproducible commands)."""
    root = Path(__file__).resolve().parents[3]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
