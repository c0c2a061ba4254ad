"""What every training script shares: the model-input contract, data sets, metrics and bundle writing.

The networks are trained on exactly what the product feeds them: :func:`to_model_input` is the
engine's own preprocessing (:mod:`XAIExplainLib.preprocessing`) driven by a bundle's ``xai`` metadata,
not a second implementation of it.
"""

from __future__ import annotations

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

from ..models import file_sha256
from ..models.spec import covers_whole_image
from ..preprocessing import InputSpec, IntensitySpec, model_grid, normalise_intensity, to_model_grid

__all__ = [
    "model_grid_for",
    "to_model_input",
    "mask_to_model_grid",
    "seed_everything",
    "roc_auc",
    "dice",
    "bootstrap_interval",
    "write_bundle",
    "Stopwatch",
    "environment",
    "display_path",
]


def model_grid_for(image: sitk.Image, xai_meta: Mapping[str, Any]) -> sitk.Image:
    """The empty model grid on which ``image`` is presented to the network (segmentation: whole image)."""
    spec = InputSpec.from_metadata(xai_meta["input"], covers_whole_image=covers_whole_image(xai_meta))
    return model_grid(image, spec)


def to_model_input(image: sitk.Image, xai_meta: Mapping[str, Any]) -> np.ndarray:
    """The network input for ``image``: resampled to the model grid, ``(x, y, z)``, normalised.

    Returns a float32 array of shape ``(X, Y, Z)``; add two leading axes to feed the network.
    """
    intensity = IntensitySpec.from_metadata(xai_meta.get("intensity", {"kind": "none"}))
    return normalise_intensity(to_model_grid(image, model_grid_for(image, xai_meta)), intensity)


def mask_to_model_grid(
    mask: sitk.Image, image: sitk.Image, xai_meta: Mapping[str, Any], keep_every_lesion: bool = False
) -> np.ndarray:
    """Binary lesion mask on the model grid of ``image`` (linear resampling of the 0/1 mask, ≥ 0.5).

    ``keep_every_lesion``: a lesion smaller than the model's voxels (a 5 mm nodule on a 3 mm grid) may
    cover no model voxel by half and vanish — and a training target without it teaches the network that
    the nodule is background. With this flag such a lesion keeps the model voxel at its centroid.
    Training targets use it; Dice is measured against the plain resampled mask.
    """
    grid = model_grid_for(image, xai_meta)

    def resampled(binary: sitk.Image) -> np.ndarray:
        coverage = sitk.Resample(sitk.Cast(binary, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear,
                                 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(coverage).transpose(2, 1, 0) >= 0.5

    result = resampled(mask > 0)
    if keep_every_lesion:
        lesions = sitk.ConnectedComponent(mask > 0)
        shapes = sitk.LabelShapeStatisticsImageFilter()
        shapes.Execute(lesions)
        for label in shapes.GetLabels():
            if not resampled(lesions == label).any():
                index = grid.TransformPhysicalPointToIndex(shapes.GetCentroid(label))
                if all(0 <= i < n for i, n in zip(index, result.shape)):
                    result[index] = True
    return result


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


def bootstrap_interval(statistic: Callable[[np.ndarray], Optional[float]], n: int, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993)
    of ``statistic(indices)`` over ``n`` cases drawn with replacement; draws where it is undefined
    (``None`` or NaN: e.g. an AUC of one class only) are left out. NaNs when no draw is defined."""
    rng = np.random.default_rng(seed)
    values = [statistic(draw) for draw in rng.integers(0, n, size=(resamples, n))] if n else []
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice overlap of two binary arrays (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / total)


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
    metadata["xai"] = dict(metadata["xai"], weights_sha256=file_sha256(weights))
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
    root = Path(__file__).resolve().parents[3]  # <checkout>/XAIExplain/XAIExplainLib/training
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
