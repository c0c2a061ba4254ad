"""Where a trained network draws its line: a lesion log-odds offset, folded into the output bias.

Segmenters (:func:`choose_outline_offset`): where the outline runs, chosen on the training cases.
Max-pooled classifiers (:func:`choose_operating_offset`): the case threshold, chosen on validation cases.

A segmenter trained with Dice + cross-entropy on patches that are mostly background, and with a loss
that pushes the most suspicious background voxel down, comes out cautious: its arg-max outline
covers the brightest core of a lesion and leaves the rest (mean Dice 0.69 on its own training cases).
Choosing the decision threshold on the training data, as nnU-Net does its post-processing (Isensee et
al., Nat. Methods 2021), and folding it into the output layer's bias keeps the bundle a plain network
whose arg-max is the outline — every consumer (engine, Slicer, MONAI) sees the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.pooling import voxel_log_odds
from .common import dice
from .datasets import ModelGridSet

__all__ = ["OutlineCalibration", "OperatingPoint", "choose_outline_offset", "choose_operating_offset",
           "shift_lesion_log_odds", "OFFSETS", "OPERATING_OFFSETS"]

#: Candidate offsets added to every voxel's lesion log-odds (0 = the network as trained).
OFFSETS: tuple[float, ...] = tuple(float(v) for v in np.arange(0.0, 6.01, 0.5))
#: A case threshold may also have to rise (an over-eager classifier): the operating point looks both ways.
OPERATING_OFFSETS: tuple[float, ...] = tuple(float(v) for v in np.arange(-6.0, 6.01, 0.5))


@dataclass(frozen=True)
class OutlineCalibration:
    """The chosen offset and, per candidate, mean lesion Dice and lesion-free cases with a false positive."""

    offset: float
    mean_dice: dict[float, float]
    false_positive_cases: dict[float, int]


@torch.no_grad()
def choose_outline_offset(
    network: nn.Module, data: ModelGridSet, offsets: Sequence[float] = OFFSETS, positive_class: int = 1
) -> OutlineCalibration:
    """The offset with the best mean Dice over ``data``'s lesion cases among those that give no more
    lesion-free case a false-positive voxel than the network as trained (dropout off)."""
    assert data.masks is not None, "choosing an outline needs masks"
    network.eval()
    scores: dict[float, list[float]] = {o: [] for o in offsets}
    false_positive = {o: 0 for o in offsets}
    for image, mask in zip(data.images, data.masks):
        logits = network(torch.from_numpy(image.astype(np.float32))[None, None])
        log_odds = voxel_log_odds(logits, positive_class, "softmax")[0].numpy()
        for offset in offsets:
            outline = log_odds + offset > 0
            if mask.any():
                scores[offset].append(dice(outline, mask))
            else:
                false_positive[offset] += int(outline.any())
    mean_dice = {o: float(np.mean(s)) if s else float("nan") for o, s in scores.items()}
    allowed = [o for o in offsets if false_positive[o] <= false_positive[min(offsets)]]
    best = max(allowed, key=lambda o: (mean_dice[o], -o))
    return OutlineCalibration(best, mean_dice, false_positive)


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen case-threshold offset and, per candidate, sensitivity and false-positive rate."""

    offset: float
    sensitivity: dict[float, float]
    false_positive_rate: dict[float, float]
    n_with_lesion: int
    n_lesion_free: int

    @property
    def n_cases(self) -> int:
        return self.n_with_lesion + self.n_lesion_free

    @property
    def sensitivity_change(self) -> tuple[float, float]:
        """Validation sensitivity as trained and at the chosen offset."""
        return self.sensitivity[0.0], self.sensitivity[self.offset]

    @property
    def false_positive_rate_change(self) -> tuple[float, float]:
        """Validation false-positive rate as trained and at the chosen offset."""
        return self.false_positive_rate[0.0], self.false_positive_rate[self.offset]


@torch.no_grad()
def choose_operating_offset(
    network: nn.Module,
    data: ModelGridSet,
    max_false_positive_rate: float = 0.05,
    offsets: Sequence[float] = OPERATING_OFFSETS,
    positive_class: int = 1,
) -> OperatingPoint:
    """The largest offset at which at most ``max_false_positive_rate`` of ``data``'s lesion-free cases are
    called positive by the max-pooled case score (the most suspicious voxel's lesion log-odds, dropout off).

    A classifier trained to push every lesion-free volume's most suspicious voxel down comes out with its
    0.5 threshold far on the cautious side (specificity 1.00, sensitivity 0.87 on held-out chest cases):
    a detection task's operating point is chosen for sensitivity at a stated specificity (here 95 %),
    on cases neither trained nor tested on. ROC AUC is unchanged: the offset moves every case alike.
    """
    network.eval()
    peaks = np.array([
        float(voxel_log_odds(network(torch.from_numpy(image.astype(np.float32))[None, None]), positive_class,
                             "softmax").max())
        for image in data.images
    ])
    labels = np.asarray(data.labels)
    with_lesion, free = peaks[labels == 1], peaks[labels == 0]
    if not free.size or not with_lesion.size:
        raise ValueError("Choosing an operating point needs cases with and without a lesion.")
    offsets = sorted({0.0, *offsets})  # the network as trained is always reported
    sensitivity = {o: float(np.mean(with_lesion + o > 0)) for o in offsets}
    false_positive_rate = {o: float(np.mean(free + o > 0)) for o in offsets}
    allowed = [o for o in offsets if false_positive_rate[o] <= max_false_positive_rate]
    if not allowed:
        raise ValueError(f"Even the smallest offset calls more than {max_false_positive_rate:.0%} of the lesion-free "
                         "validation cases positive.")
    return OperatingPoint(max(allowed), sensitivity, false_positive_rate, int(with_lesion.size), int(free.size))


@torch.no_grad()
def shift_lesion_log_odds(network: nn.Module, offset: float, positive_class: int = 1) -> None:
    """Add ``offset`` to the lesion log-odds of every voxel by raising the bias of the network's last
    convolution (a two-class network's output is that convolution plus, at most, a residual path
    without bias). Checked on a probe input: a network whose output is not that convolution's is refused."""
    convolutions = [m for m in network.modules()
                    if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None and m.out_channels == 2]
    if not convolutions:
        raise ValueError("No two-channel output convolution with a bias: cannot fold the outline offset in.")
    probe = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    was_training = network.training
    network.eval()
    before = voxel_log_odds(network(probe), positive_class, "softmax")
    convolutions[-1].bias[positive_class] += offset
    shift = voxel_log_odds(network(probe), positive_class, "softmax") - before
    network.train(was_training)
    if not torch.allclose(shift, torch.full_like(shift, offset), atol=1e-3):
        convolutions[-1].bias[positive_class] -= offset
        raise ValueError("The last convolution is not the network's output: the outline offset was not applied.")
