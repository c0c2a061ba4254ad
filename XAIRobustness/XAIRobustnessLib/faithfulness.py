"""Deletion and insertion curves: does removing what the explanation points at change the answer?

Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018 (arXiv:1806.07421), in 3-D on the model grid. Voxels of the anatomy are ranked by the
explanation (highest first) and, in ``steps`` equal steps:

* **deletion** — replaced by an in-distribution "nothing here" value, the Gaussian-blurred image
  (σ = ``blur_mm``; never 0, which is out of distribution for CT and for z-scored MRI); the explained
  class's probability should fall fast (low area under the curve);
* **insertion** — put back into the blurred image; the probability should rise fast (high AUC).

Both AUCs are compared with ``n_random`` random orderings of the same voxels on the same case (seeded),
averaged: an explanation is **faithful** here when its deletion AUC is below and its insertion AUC
above the random ones by more than :data:`MARGIN` (0.01) or the random AUCs' standard deviation,
whichever is larger — a tie with chance is not faithfulness. All curves go through the model in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.progress import CancelToken, ProgressCallback, Stage

from .reference import Reference, explain_reference, run_batched, target_probability

__all__ = ["MARGIN", "FaithfulnessResult", "faithfulness_test", "ordering", "auc"]

#: The least AUC difference from random orderings that counts as beating them.
MARGIN = 0.01


@dataclass
class FaithfulnessResult:
    """Deletion / insertion curves of one explanation and of random orderings, with their AUCs."""

    method: str
    method_name: str
    target: str
    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    random_deletion: list[float]  # mean over the random orderings
    random_insertion: list[float]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    random_deletion_auc_std: float
    random_insertion_auc_std: float
    settings: dict

    @property
    def deletion_beats_random(self) -> bool:
        return self.deletion_auc < self.random_deletion_auc - max(MARGIN, self.random_deletion_auc_std)

    @property
    def insertion_beats_random(self) -> bool:
        return self.insertion_auc > self.random_insertion_auc + max(MARGIN, self.random_insertion_auc_std)

    @property
    def passed(self) -> bool:
        return self.deletion_beats_random and self.insertion_beats_random

    @property
    def verdict(self) -> str:
        summary = (f"deletion AUC {self.deletion_auc:.3f} vs {self.random_deletion_auc:.3f} random (lower is better), "
                   f"insertion AUC {self.insertion_auc:.3f} vs {self.random_insertion_auc:.3f} random (higher is better)")
        if self.passed:
            return f"{self.method_name} is faithful on this case: {summary}."
        failed = [name for name, ok in (("deletion", self.deletion_beats_random),
                                        ("insertion", self.insertion_beats_random)) if not ok]
        return (f"{self.method_name} is NOT more faithful than a random ranking on this case ({' and '.join(failed)}): "
                f"{summary}. The highlighted voxels are not what drives the prediction.")

    def to_json(self) -> dict:
        return {
            "method": self.method, "method_name": self.method_name, "target": self.target,
            "passed": self.passed, "deletion_beats_random": self.deletion_beats_random,
            "insertion_beats_random": self.insertion_beats_random, "verdict": self.verdict, "margin": MARGIN,
            "deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc,
            "random_deletion_auc": self.random_deletion_auc, "random_insertion_auc": self.random_insertion_auc,
            "random_deletion_auc_std": self.random_deletion_auc_std,
            "random_insertion_auc_std": self.random_insertion_auc_std,
            "curves": {"fraction": self.fractions, "deletion": self.deletion, "insertion": self.insertion,
                       "random_deletion": self.random_deletion, "random_insertion": self.random_insertion},
            "settings": self.settings,
            "reference": "Petsiuk et al., BMVC 2018 (arXiv:1806.07421), deletion and insertion",
        }

    def curve_columns(self) -> dict[str, list[float]]:
        """The curves as equal-length columns (a table, a CSV, a plot)."""
        return {"fraction": self.fractions, "deletion": self.deletion, "random_deletion": self.random_deletion,
                "insertion": self.insertion, "random_insertion": self.random_insertion}


def auc(fractions: np.ndarray | list[float], scores: np.ndarray | list[float]) -> float:
    """Area under a curve sampled at ``fractions`` (trapezoids), 0..1 for scores in 0..1."""
    x, y = np.asarray(fractions, dtype=float), np.asarray(scores, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def ordering(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``values`` from highest to lowest; ties in a seeded random order."""
    return np.lexsort((rng.random(values.size), -values))


def faithfulness_test(
    image: sitk.Image,
    model: LoadedModel,
    method: str = "gradcam",
    steps: int = 20,
    n_random: int = 3,
    blur_mm: float = 10.0,
    seed: int = 0,
    method_params: Optional[dict[str, Any]] = None,
    memory_budget_mb: float = 2048,
    saliency: Optional[torch.Tensor] = None,
    reference: Optional[Reference] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    other_channels: Sequence[sitk.Image] = (),
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``method`` (or of a given model-grid ``saliency``) on ``image`` (and a
    multi-channel model's ``other_channels``: voxels are deleted and inserted in every channel together)."""
    if steps < 2 or n_random < 1 or blur_mm <= 0:
        raise XAIInputError("Faithfulness needs at least 2 steps, 1 random ordering and a positive blur.")
    stage = Stage(progress, cancel)
    reference = reference or explain_reference(image, model, method, seed, method_params, memory_budget_mb,
                                               stage.sub(0.0, 0.1), other_channels=other_channels)
    attribution = (saliency if saliency is not None else reference.saliency).detach().cpu().numpy()
    inputs = reference.case.inputs[0]  # [C, *spatial]: a voxel is removed from every channel at once
    spacing = np.asarray(reference.case.grid.GetSpacing(), dtype=float)  # model grid (x, y, z) = array order
    fill = torch.from_numpy(ndimage.gaussian_filter(inputs.numpy(), [0.0, *(blur_mm / spacing)], mode="nearest"))
    voxels = np.flatnonzero(reference.anatomy.numpy().ravel())
    rng = np.random.default_rng(seed)
    orders = [voxels[ordering(attribution.ravel()[voxels], rng)]]
    orders += [rng.permutation(voxels) for _ in range(n_random)]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * voxels.size).astype(int)

    curves: list[tuple[np.ndarray, np.ndarray]] = []
    work = stage.sub(0.1, 1.0)
    for index, order in enumerate(orders):
        label = "explanation" if index == 0 else f"random ordering {index}"
        work.report(index / len(orders), f"deletion and insertion, {label}")
        deletion = _curve(model, reference, inputs, fill, order, counts)
        insertion = _curve(model, reference, fill, inputs, order, counts)
        curves.append((deletion, insertion))
    stage.report(1.0, "done")

    random_deletion = np.stack([c[0] for c in curves[1:]])
    random_insertion = np.stack([c[1] for c in curves[1:]])
    random_deletion_aucs = [auc(fractions, c) for c in random_deletion]
    random_insertion_aucs = [auc(fractions, c) for c in random_insertion]
    return FaithfulnessResult(
        method=method,
        method_name=reference.explainer.title if saliency is None else f"given map ({method})",
        target=reference.target.description,
        fractions=fractions.tolist(),
        deletion=curves[0][0].tolist(),
        insertion=curves[0][1].tolist(),
        random_deletion=random_deletion.mean(axis=0).tolist(),
        random_insertion=random_insertion.mean(axis=0).tolist(),
        deletion_auc=auc(fractions, curves[0][0]),
        insertion_auc=auc(fractions, curves[0][1]),
        random_deletion_auc=float(np.mean(random_deletion_aucs)),
        random_insertion_auc=float(np.mean(random_insertion_aucs)),
        random_deletion_auc_std=float(np.std(random_deletion_aucs)),
        random_insertion_auc_std=float(np.std(random_insertion_aucs)),
        settings={"steps": steps, "n_random": n_random, "blur_mm": blur_mm, "seed": seed,
                  "voxels_ranked": int(voxels.size), "score": "probability of the explained target",
                  "removed_value": f"Gaussian-blurred image (sigma {blur_mm:g} mm)",
                  "grid": "model grid, voxels of the anatomy (foreground of the input)"},
    )


def _curve(model: LoadedModel, reference: Reference, start: torch.Tensor, end: torch.Tensor, order: np.ndarray,
           counts: np.ndarray) -> np.ndarray:
    """Score while the voxels ``order[:count]`` of ``start`` (``[C, *spatial]``) take ``end``'s values in every
    channel, for each count."""
    flat_start, flat_end = start.reshape(start.shape[0], -1), end.reshape(end.shape[0], -1)
    index = torch.from_numpy(order)
    scores = []
    for first in range(0, len(counts), reference.chunk):
        batch = []
        for count in counts[first:first + reference.chunk]:
            current = flat_start.clone()
            current[:, index[:count]] = flat_end[:, index[:count]]
            batch.append(current.reshape(start.shape))
        probabilities, _ = run_batched(model, reference, torch.stack(batch), explain=False)
        scores.append(target_probability(reference, probabilities))
    return torch.cat(scores).numpy().astype(float)
