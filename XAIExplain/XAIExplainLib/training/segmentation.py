"""Patch-based training and whole-volume evaluation of a lesion segmenter.

Training draws random patches from volumes on the model grid, a chosen fraction of them centred on a
lesion voxel when the case has one (foreground-balanced sampling as in nnU-Net, Isensee et al., Nat. Methods 2021),
with random left–right flips, and minimises MONAI's Dice + cross-entropy loss (Milletari et al., 3DV
2016) with AdamW and a one-cycle schedule. Evaluation runs the network on the whole model-grid volume,
as a segmenter (Dice) or, through the engine's max-pooling head, as a case classifier (AUC).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from ..models.pooling import MaxPooledClassifier
from .common import dice, roc_auc
from .datasets import ModelGridSet

__all__ = [
    "random_patch",
    "train_segmenter",
    "finetune_case_level",
    "predict_masks",
    "evaluate_segmenter",
    "evaluate_pooled_classifier",
]


def random_patch(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, patch: Sequence[int], lesion_bias: float = 2 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch``-sized crop of ``(image, mask)``, centred on a lesion voxel with ``lesion_bias``.

    Volumes smaller than the patch are padded with the image minimum (mask 0).
    """
    pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape)]
    if any(after for _, after in pad):
        image = np.pad(image, pad, constant_values=float(image.min()))
        mask = np.pad(mask, pad, constant_values=False)
    if mask.any() and rng.random() < lesion_bias:
        points = np.argwhere(mask)
        centre = points[rng.integers(len(points))]
        start = [int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                 for c, p, s in zip(centre, patch, image.shape)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, image.shape)]
    box = tuple(slice(b, b + p) for b, p in zip(start, patch))
    return image[box], mask[box]


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
    log: Optional[Callable[[str], None]] = None,
) -> list[float]:
    """Train ``network`` in place on random patches; returns the mean loss of each epoch."""
    assert data.masks is not None, "segmentation training needs masks"
    rng = np.random.default_rng(seed)
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
            pairs = [random_patch(rng, data.images[i].astype(np.float32), data.masks[i], patch, lesion_bias)
                     for i in order[start:start + batch_size]]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
            masks = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))[:, None]
            flips = torch.rand(len(pairs), generator=generator) < 0.5
            images[flips] = torch.flip(images[flips], dims=[2])
            masks[flips] = torch.flip(masks[flips], dims=[2])
            loss = loss_fn(network(images), masks)
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
    """Fine-tune on whole volumes through the max-pooling head, so the case score is what is optimised.

    Patch training never shows the network the one spot of a lesion-free volume it finds most
    suspicious; here cross-entropy on the case logits (the most suspicious voxel's,
    :class:`~XAIExplainLib.models.pooling.MaxPooledClassifier`) pushes exactly that voxel down — hard
    negative mining for free, as in multiple-instance learning (Maron & Lozano-Pérez, NIPS 1998) — while
    the Dice + cross-entropy of the whole lesion map keeps the localisation. Batch-norm statistics stay
    frozen (one whole volume per step); dropout stays on.
    """
    assert data.masks is not None, "case-level fine-tuning keeps the lesion maps and needs masks"
    rng = np.random.default_rng(seed)
    head = MaxPooledClassifier(network, positive_class)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    dense_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    case_loss = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        network.train()
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        total = 0.0
        for index in rng.permutation(len(data)):
            image = torch.from_numpy(data.images[index].astype(np.float32))[None, None]
            mask = torch.from_numpy(data.masks[index].astype(np.int64))[None, None]
            if rng.random() < 0.5:
                image, mask = torch.flip(image, dims=[2]), torch.flip(mask, dims=[2])
            maps = network(image)
            case_logits = head.pool(maps)
            label = torch.tensor([int(data.labels[index])])
            loss = case_loss(case_logits, label) + (dense_loss(maps, mask) if mask.any() else 0.0)
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
    """Mean and median Dice over cases with a lesion (``None`` if there are none), pooled Dice, and the
    fraction of lesion-free cases with any false-positive voxel."""
    assert data.masks is not None, "segmentation evaluation needs masks"
    predicted = predict_masks(network, data)
    with_lesion = [i for i, m in enumerate(data.masks) if m.any()]
    without = [i for i, m in enumerate(data.masks) if not m.any()]
    scores = [dice(predicted[i], data.masks[i]) for i in with_lesion]
    overlap = sum(2 * np.logical_and(predicted[i], data.masks[i]).sum() for i in with_lesion)
    volume = sum(predicted[i].sum() + data.masks[i].sum() for i in with_lesion)
    return {
        "dice": round(float(np.mean(scores)), 4) if scores else None,
        "dice_median": round(float(np.median(scores)), 4) if scores else None,
        "dice_pooled": round(float(overlap / volume) if volume else 1.0, 4),
        "lesion_free_cases_with_false_positives": round(
            float(np.mean([predicted[i].any() for i in without])) if without else 0.0, 4),
        "n": len(data),
        "n_with_lesion": len(with_lesion),
    }


@torch.no_grad()
def evaluate_pooled_classifier(network: nn.Module, data: ModelGridSet, positive_class: int = 1) -> dict[str, float]:
    """ROC AUC, sensitivity and specificity (at 0.5) of the case probability given by the engine's
    :class:`~XAIExplainLib.models.pooling.MaxPooledClassifier` around ``network`` (dropout off)."""
    head = MaxPooledClassifier(network, positive_class).eval()
    scores = np.array([
        torch.softmax(head(torch.from_numpy(image.astype(np.float32))[None, None]), dim=1)[0, positive_class].item()
        for image in data.images
    ])
    labels = np.asarray(data.labels)
    called = scores >= 0.5
    return {
        "auc": round(roc_auc(scores, labels), 4) if 0 < labels.sum() < len(labels) else None,
        "sensitivity": round(float(called[labels == 1].mean()), 4) if (labels == 1).any() else None,
        "specificity": round(float((~called[labels == 0]).mean()), 4) if (labels == 0).any() else None,
        "n": len(data),
        "n_with_lesion": int((labels == 1).sum()),
    }
