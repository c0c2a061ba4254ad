"""Patch-based training and whole-volume evaluation of a lesion segmenter.

Training draws random patches from volumes on the model grid, a chosen fraction of them centred on a
lesion voxel when the case has one (foreground-balanced sampling as in nnU-Net, Isensee et al., Nat. Methods 2021),
with random left–right flips, and minimises MONAI's Dice + cross-entropy loss (Milletari et al., 3DV
2016), optionally plus a detection loss on the peaks of the lesion map (:func:`lesion_peak_loss`), with
AdamW and a one-cycle schedule; whole-volume fine-tuning (:func:`finetune_case_level`) then optimises
the case score of the max-pooling head. Evaluation runs the network on the whole model-grid volume,
as a segmenter (Dice) or, through the engine's max-pooling head, as a case classifier (AUC).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from ..models.pooling import MaxPooledClassifier, voxel_log_odds
from .common import bootstrap_interval, dice, roc_auc
from .datasets import ModelGridSet

__all__ = [
    "random_patch",
    "flip_patches",
    "label_lesions",
    "lesion_peak_loss",
    "train_segmenter",
    "finetune_case_level",
    "predict_masks",
    "evaluate_segmenter",
    "evaluate_pooled_classifier",
    "SingleLesionTally",
]


def random_patch(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    patch: Sequence[int],
    lesion_bias: float = 2 / 3,
    balance_lesions: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch``-sized crop of ``(image, mask)``, centred on a lesion voxel with ``lesion_bias``.

    ``balance_lesions`` (``mask`` holding lesion labels ``1..K``): pick the lesion first, each equally
    likely, then a voxel of it. Otherwise a voxel of the whole mask is drawn, and a 20 mm nodule (about
    300 voxels on a 3 mm grid) is centred 70 times as often as a 5 mm one beside it, so the smallest
    lesions — the likeliest misses — are the ones training rarely looks at.
    Volumes smaller than the patch are padded with the image minimum (mask 0).
    """
    pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape)]
    if any(after for _, after in pad):
        image = np.pad(image, pad, constant_values=float(image.min()))
        mask = np.pad(mask, pad, constant_values=False)
    if mask.any() and rng.random() < lesion_bias:
        if balance_lesions:
            labels = np.unique(mask[mask > 0])
            points = np.argwhere(mask == labels[rng.integers(len(labels))])
        else:
            points = np.argwhere(mask)
        centre = points[rng.integers(len(points))]
        start = [int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                 for c, p, s in zip(centre, patch, image.shape)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, image.shape)]
    box = tuple(slice(b, b + p) for b, p in zip(start, patch))
    return image[box], mask[box]


def flip_patches(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, every_axis: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flips of ``(B, 1, X, Y, Z)`` patches and their ``(B, X, Y, Z)`` labels.

    ``every_axis``: each axis flipped independently and, for square axial patches, x and y swapped with
    probability one half — the 16 orientations a lesion can take without resampling. A small nodule is
    round in every one of them, while the vessels and walls it is confused with keep their own shape, so
    each nodule the generator drew is shown as 16 different neighbourhoods.
    """
    axes = 3 if every_axis else 1
    for axis in range(axes):
        flips = torch.rand(len(images), generator=generator) < 0.5
        images[flips] = torch.flip(images[flips], dims=[2 + axis])
        labels[flips] = torch.flip(labels[flips], dims=[1 + axis])
    if every_axis and images.shape[2] == images.shape[3]:
        turns = torch.rand(len(images), generator=generator) < 0.5
        images[turns] = images[turns].transpose(2, 3)
        labels[turns] = labels[turns].transpose(1, 2)
    return images, labels


_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _dilate(binary: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` boolean masks grown by one voxel (full neighbourhood)."""
    grown = _MAX_POOLS[binary.dim() - 1](binary.float()[:, None], 3, stride=1, padding=1)
    return grown[:, 0] > 0


def label_lesions(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each binary mask as connected lesions ``1..K`` (int16; face connectivity), 0 for background."""
    return [ndimage.label(mask)[0].astype(np.int16) for mask in masks]


def lesion_peak_loss(logits: torch.Tensor, lesions: torch.Tensor, positive_class: int = 1) -> torch.Tensor:
    """Detection loss on the peaks of the lesion log-odds map: every lesion's peak up, the background's down.

    ``logits`` ``(B, C, *spatial)``, ``lesions`` ``(B, *spatial)`` integer lesion labels (0 background).
    Binary cross-entropy of the highest voxel log-odds inside each lesion against 1, and of the highest
    one outside every lesion (lesions dilated by one voxel: their partial-volume rim is ambiguous)
    against 0 — the case score of a max-pooled classifier, pushed the right way. Unlike cross-entropy of
    the global maximum (multiple-instance learning, Maron & Lozano-Pérez, NIPS 1998), a missed lesion
    raises its own peak, not the vessel that happens to be the case's maximum; and a small lesion weighs
    as much as a large one, which Dice over the batch (dominated by large lesions' volume) does not give.
    """
    odds = voxel_log_odds(logits.flatten(2), positive_class, "softmax")  # (B, N)
    labels = lesions.flatten(1)
    near = _dilate(lesions > 0).flatten(1)
    background = odds.masked_fill(near, float("-inf")).amax(dim=1)
    terms = [F.softplus(background[background > float("-inf")])]
    for case in range(labels.shape[0]):
        ids = labels[case]
        count = int(ids.max())
        if count:
            peaks = torch.full((count + 1,), float("-inf"), dtype=odds.dtype).scatter_reduce(
                0, ids.long(), odds[case], reduce="amax")[1:]
            terms.append(F.softplus(-peaks[peaks > float("-inf")]))
    return torch.cat(terms).mean()


def train_segmenter(
    network: nn.Module,
    data: ModelGridSet,
    epochs: int,
    patch: Sequence[int],
    seed: int,
    generator: torch.Generator,
    batch_size: int = 4,
    patches_per_case: int = 2,
    learning_rate: float = 3e-3,
    lesion_bias: float = 0.5,
    peak_weight: float = 0.0,
    balance_lesions: bool = False,
    every_axis: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> list[float]:
    """Train ``network`` in place on random patches; returns the mean loss of each epoch.

    ``peak_weight`` adds :func:`lesion_peak_loss` of each patch to its Dice + cross-entropy;
    ``balance_lesions`` centres patches on every lesion equally often (:func:`random_patch`);
    ``every_axis`` flips and turns patches along every axis (:func:`flip_patches`).
    """
    assert data.masks is not None, "segmentation training needs masks"
    rng = np.random.default_rng(seed)
    lesions = label_lesions(data.masks)
    n_samples = len(data) * patches_per_case
    steps_per_epoch = max(1, int(np.ceil(n_samples / batch_size)))
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    losses = []
    for epoch in range(epochs):
        network.train()
        order = np.repeat(rng.permutation(len(data)), patches_per_case)
        rng.shuffle(order)
        total = 0.0
        for start in range(0, n_samples, batch_size):
            pairs = [random_patch(rng, data.images[i].astype(np.float32), lesions[i], patch, lesion_bias,
                                  balance_lesions)
                     for i in order[start:start + batch_size]]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
            labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
            images, labels = flip_patches(images, labels, generator, every_axis)
            logits = network(images)
            loss = loss_fn(logits, (labels > 0).long()[:, None])
            if peak_weight:
                loss = loss + peak_weight * lesion_peak_loss(logits, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(pairs)
        losses.append(total / n_samples)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    return losses


def finetune_case_level(
    network: nn.Module,
    data: ModelGridSet,
    epochs: int,
    seed: int,
    learning_rate: float = 3e-4,
    positive_class: int = 1,
    log: Optional[Callable[[str], None]] = None,
) -> list[float]:
    """Fine-tune on whole volumes, so the case score of the max-pooling head is what is optimised.

    Patch training never shows the network the one spot of a lesion-free volume it finds most
    suspicious; here :func:`lesion_peak_loss` on the whole volume pushes exactly that voxel down (for a
    lesion-free case it is the cross-entropy of the case logits of
    :class:`~XAIExplainLib.models.pooling.MaxPooledClassifier`: hard negative mining for free) and every
    lesion's own peak up, while the Dice + cross-entropy of the whole lesion map keeps the localisation.
    Batch-norm statistics stay frozen (one whole volume per step); dropout stays on.
    """
    assert data.masks is not None, "case-level fine-tuning keeps the lesion maps and needs masks"
    rng = np.random.default_rng(seed)
    lesions = label_lesions(data.masks)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    dense_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    losses = []
    for epoch in range(epochs):
        network.train()
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        total = 0.0
        for index in rng.permutation(len(data)):
            image = torch.from_numpy(data.images[index].astype(np.float32))[None, None]
            labels = torch.from_numpy(lesions[index].astype(np.int64))[None]
            if rng.random() < 0.5:
                image, labels = torch.flip(image, dims=[2]), torch.flip(labels, dims=[1])
            maps = network(image)
            mask = (labels > 0).long()[:, None]
            loss = lesion_peak_loss(maps, labels, positive_class) + (dense_loss(maps, mask) if mask.any() else 0.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        losses.append(total / len(data))
        if log is not None:
            log(f"case-level epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    return losses


@torch.no_grad()
def predict_masks(network: nn.Module, data: ModelGridSet, positive_class: int = 1) -> list[np.ndarray]:
    """Arg-max lesion masks of every case (whole model-grid volume, dropout off)."""
    network.eval()
    masks = []
    for image in data.images:
        logits = network(torch.from_numpy(image.astype(np.float32))[None, None])
        masks.append((logits.argmax(dim=1)[0] == positive_class).numpy())
    return masks


def evaluate_segmenter(network: nn.Module, data: ModelGridSet) -> dict[str, float]:
    """Mean Dice over cases with a lesion with its 95 % bootstrap interval (``None`` if there are none),
    the median, pooled Dice, and the fraction of lesion-free cases with any false-positive voxel."""
    assert data.masks is not None, "segmentation evaluation needs masks"
    predicted = predict_masks(network, data)
    with_lesion = [i for i, m in enumerate(data.masks) if m.any()]
    without = [i for i, m in enumerate(data.masks) if not m.any()]
    scores = [dice(predicted[i], data.masks[i]) for i in with_lesion]
    overlap = sum(2 * np.logical_and(predicted[i], data.masks[i]).sum() for i in with_lesion)
    volume = sum(predicted[i].sum() + data.masks[i].sum() for i in with_lesion)
    per_case = np.asarray(scores, dtype=float)
    return {
        "dice": round(float(np.mean(scores)), 4) if scores else None,
        "dice_ci95": _rounded(bootstrap_interval(lambda draw: per_case[draw].mean(), len(scores))) if scores else None,
        "dice_median": round(float(np.median(scores)), 4) if scores else None,
        "dice_pooled": round(float(overlap / volume) if volume else 1.0, 4),
        "lesion_free_cases_with_false_positives": round(
            float(np.mean([predicted[i].any() for i in without])) if without else 0.0, 4),
        "n": len(data),
        "n_with_lesion": len(with_lesion),
    }


@torch.no_grad()
def evaluate_pooled_classifier(network: nn.Module, data: ModelGridSet, positive_class: int = 1) -> dict[str, Any]:
    """ROC AUC with its 95 % bootstrap interval over cases, sensitivity and specificity (at 0.5) of the case
    probability given by the engine's :class:`~XAIExplainLib.models.pooling.MaxPooledClassifier` around
    ``network`` (dropout off); with masks, which single lesions it finds by size (:class:`SingleLesionTally`),
    read from the same lesion maps."""
    head = MaxPooledClassifier(network, positive_class).eval()
    tally = SingleLesionTally()
    scores = []
    for index, image in enumerate(data.images):
        maps = head.dense(torch.from_numpy(image.astype(np.float32))[None, None])
        scores.append(torch.softmax(head.pool(maps), dim=1)[0, positive_class].item())
        if data.masks is not None:
            tally.add(voxel_log_odds(maps, positive_class, "softmax")[0].numpy(), data.masks[index], data.infos[index])
    scores = np.array(scores)
    labels = np.asarray(data.labels)
    called = scores >= 0.5
    both_classes = 0 < labels.sum() < len(labels)

    def auc_of(draw: np.ndarray) -> Optional[float]:
        return roc_auc(scores[draw], labels[draw]) if 0 < labels[draw].sum() < len(draw) else None

    metrics: dict[str, Any] = {
        "auc": round(roc_auc(scores, labels), 4) if both_classes else None,
        "auc_ci95": _rounded(bootstrap_interval(auc_of, len(labels))) if both_classes else None,
        "sensitivity": round(float(called[labels == 1].mean()), 4) if (labels == 1).any() else None,
        "specificity": round(float((~called[labels == 0]).mean()), 4) if (labels == 0).any() else None,
        "n": len(data),
        "n_with_lesion": int((labels == 1).sum()),
    }
    if data.masks is not None:
        metrics["single_lesions_found"] = tally.summary()
    return metrics


class SingleLesionTally:
    """How many lesions of each size a model finds, over cases with exactly one lesion: found = lesion
    log-odds above 0 within one voxel of its mask on the model grid (build the masks with
    ``keep_every_lesion``, so that a lesion smaller than a voxel is still there). AUC says how cases rank;
    this says which lesions are the misses."""

    #: (smallest, largest nominal diameter in mm, label), largest first.
    BANDS = ((10.0, float("inf"), ">= 10 mm"), (6.0, 10.0, "6-10 mm"), (0.0, 6.0, "< 6 mm"))

    def __init__(self) -> None:
        self.counts = {label: [0, 0] for _, _, label in self.BANDS}

    def add(self, log_odds: np.ndarray, mask: np.ndarray, info: dict[str, Any]) -> None:
        """Count one case (skipped unless it has exactly one lesion, present in ``mask``)."""
        lesions = info.get("lesions", [])
        if len(lesions) != 1 or not mask.any():
            return
        near = ndimage.binary_dilation(mask, structure=np.ones((3,) * mask.ndim, bool))
        diameter = float(lesions[0].get("nominal_diameter_mm", lesions[0].get("size_mm", 0.0)))
        label = next(label for low, high, label in self.BANDS if low <= diameter < high)
        self.counts[label][0] += int(log_odds[near].max() > 0)
        self.counts[label][1] += 1

    def summary(self) -> str:
        """E.g. ``">= 10 mm 52/54, 6-10 mm 20/23, < 6 mm 2/7"`` (bands without a case left out)."""
        return ", ".join(f"{label} {found}/{total}" for label, (found, total) in self.counts.items() if total)


def _rounded(interval: tuple[float, float]) -> list[float]:
    return [round(float(v), 4) for v in interval]
