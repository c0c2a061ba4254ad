"""Supervised training and evaluation of a whole-volume classifier (lesion present / absent).

Mini-batch AdamW (Loshchilov & Hutter, ICLR 2019) on cross-entropy, a one-cycle learning-rate schedule
(Smith & Topin, 2019), and random left–right flips as augmentation (the anatomy is near symmetric, the
lesions are not tied to a side).

A whole-volume label says little about *where* to look, and a small network given a few hundred
volumes learns to recognise the cases rather than the lesions. Training therefore adds deep
supervision (Lee et al., "Deeply-supervised nets", AISTATS 2015): throw-away 1x1x1 convolution heads
on intermediate stages predict the lesion mask, max-pooled to each stage's resolution, with a
binary cross-entropy loss. The heads are not part of the saved network; they only steer its features
towards the lesions (which also makes its Grad-CAM maps point at them).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .common import roc_auc
from .datasets import ModelGridSet

__all__ = ["train_classifier", "predict_probabilities", "evaluate_classifier"]


class _DeepSupervision:
    """1x1x1 convolution heads on named stages of ``network`` that predict the (max-pooled) lesion mask."""

    def __init__(self, network: nn.Module, stages: Sequence[str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.heads = nn.ModuleDict()
        self.hooks = []
        for stage in stages:
            module = network.get_submodule(stage)
            channels = [m for m in module.modules() if isinstance(m, nn.Conv3d)][-1].out_channels
            self.heads[stage.replace(".", "_")] = nn.Conv3d(channels, 1, kernel_size=1)
            self.hooks.append(module.register_forward_hook(self._keeper(stage)))

    def _keeper(self, stage: str):
        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.features[stage] = output
        return keep

    def loss(self, masks: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of every head against ``masks`` (B, 1, X, Y, Z) pooled to its stage."""
        total = masks.new_zeros(())
        for stage, feature in self.features.items():
            logits = self.heads[stage.replace(".", "_")](feature)
            target = nn.functional.adaptive_max_pool3d(masks, logits.shape[2:])
            positive = float(target.mean())
            weight = torch.tensor(min(50.0, (1.0 - positive) / positive) if positive > 0 else 1.0)
            total = total + nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        return total / max(1, len(self.features))

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def train_classifier(
    network: nn.Module,
    data: ModelGridSet,
    epochs: int,
    generator: torch.Generator,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    log: Optional[Callable[[str], None]] = None,
    supervised_stages: Sequence[str] = ("layer2", "layer3", "layer4"),
    supervision_weight: float = 1.0,
    head_lr_factor: float = 50.0,
) -> list[float]:
    """Train ``network`` in place; returns the mean loss of each epoch.

    When ``data.masks`` is set, deep-supervision heads on ``supervised_stages`` add
    ``supervision_weight`` x their mask loss to the cross-entropy (see the module docstring).

    The final linear layer learns ``head_lr_factor`` times faster than the rest: it reads globally
    average-pooled features, in which a lesion filling 1 % of the volume moves a feature by 1 %, so its
    weights must grow large — and Adam moves a weight by about one learning rate per step.
    """
    n = len(data)
    steps_per_epoch = max(1, int(np.ceil(n / batch_size)))
    supervision = _DeepSupervision(network, supervised_stages) if data.masks is not None else None
    head = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in network.parameters() if id(p) not in head_ids]
    body += list(supervision.heads.parameters()) if supervision else []
    optimiser = torch.optim.AdamW(
        [{"params": body}, {"params": list(head.parameters())}], lr=learning_rate, weight_decay=1e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[learning_rate, learning_rate * head_lr_factor],
        total_steps=epochs * steps_per_epoch, pct_start=0.2,
    )
    loss_fn = nn.CrossEntropyLoss()
    labels = torch.as_tensor(data.labels)
    losses = []
    for epoch in range(epochs):
        network.train()
        order = torch.randperm(n, generator=generator)
        total, cross_entropy, correct = 0.0, 0.0, 0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            batch = torch.stack([torch.from_numpy(data.images[i].astype(np.float32)) for i in index.tolist()])
            flips = torch.rand(len(index), generator=generator) < 0.5
            batch[flips] = torch.flip(batch[flips], dims=[1])  # axis 1 of (B, X, Y, Z) is left-right
            logits = network(batch[:, None])
            loss = loss_fn(logits, labels[index])
            if supervision is not None:
                masks = torch.stack([torch.from_numpy(data.masks[i].astype(np.float32)) for i in index.tolist()])
                masks[flips] = torch.flip(masks[flips], dims=[1])
                loss = loss + supervision_weight * supervision.loss(masks[:, None])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
            cross_entropy += loss_fn(logits.detach(), labels[index]).item() * len(index)
            correct += int((logits.detach().argmax(1) == labels[index]).sum())
        losses.append(total / n)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} (cross-entropy {cross_entropy / n:.4f}, "
                f"training accuracy {correct / n:.3f})")
    if supervision is not None:
        supervision.remove()
    return losses


@torch.no_grad()
def predict_probabilities(network: nn.Module, data: ModelGridSet, positive_class: int = 1, batch_size: int = 8) -> np.ndarray:
    """Softmax probability of ``positive_class`` for every case."""
    network.eval()
    scores = []
    for start in range(0, len(data), batch_size):
        batch = torch.stack([torch.from_numpy(x.astype(np.float32)) for x in data.images[start:start + batch_size]])
        scores.append(torch.softmax(network(batch[:, None]), dim=1)[:, positive_class].numpy())
    return np.concatenate(scores)


def evaluate_classifier(network: nn.Module, data: ModelGridSet, positive_class: int = 1) -> dict[str, float]:
    """AUC, accuracy at 0.5, sensitivity and specificity on ``data`` (``None`` where undefined)."""
    scores = predict_probabilities(network, data, positive_class)
    labels = data.labels
    predicted = scores >= 0.5
    both_classes = 0 < int((labels == 1).sum()) < len(labels)
    return {
        "auc": round(roc_auc(scores, labels), 4) if both_classes else None,
        "accuracy": round(float((predicted == (labels == 1)).mean()), 4),
        "sensitivity": round(float(predicted[labels == 1].mean()), 4) if (labels == 1).any() else None,
        "specificity": round(float((~predicted[labels == 0]).mean()), 4) if (labels == 0).any() else None,
        "n": int(len(labels)),
        "n_positive": int((labels == 1).sum()),
    }
