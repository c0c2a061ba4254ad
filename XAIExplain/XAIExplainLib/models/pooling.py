"""Case-level classification from a network that outputs a dense map of class logits.

A bundle whose ``xai.output_pooling`` is ``"max"`` holds a fully convolutional network (for instance a
MONAI ``UNet``) that scores every voxel; the case is scored by its most suspicious voxel — global max
pooling as in multiple-instance learning (Maron & Lozano-Pérez, NIPS 1998) and weakly supervised
localisation (Oquab et al., "Is object localization for free?", CVPR 2015). A small lesion then
decides the case however large the rest of the volume is, which global average pooling cannot do.

Keeping the pooling out of the bundle's ``network_def`` lets the bundle stay a plain MONAI network
config (no code expressions); the engine adds this head when it loads the model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

__all__ = ["POOLINGS", "MaxPooledClassifier", "VoxelMaxPool", "BoxedMaxPool", "pooled_layer_name"]

POOLINGS = ("max",)
_DENSE = "dense"


class MaxPooledClassifier(nn.Module):
    """Class logits of the voxel with the highest evidence for ``positive_class``.

    Input ``(B, C_in, *spatial)``, output ``(B, C)``: the logit vector of one voxel per case, so the
    case probability of the positive class is the maximum of the voxel probabilities (softmax or
    sigmoid alike) and gradients flow only through that voxel's receptive field. Written once for
    2-D and 3-D.
    """

    def __init__(self, dense: nn.Module, positive_class: int, activation: str = "softmax") -> None:
        super().__init__()
        self.dense = dense
        self.head = VoxelMaxPool(positive_class, activation)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Case logits ``(B, C)`` from dense logit maps ``(B, C, *spatial)``."""
        return self.head(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(x))


class VoxelMaxPool(nn.Module):
    """Case logits ``(B, C)``: the logits of the voxel of ``(B, C, *spatial)`` maps with the most evidence
    for ``positive_class`` (the first such voxel in memory order, as ``argmax``). No parameters."""

    def __init__(self, positive_class: int, activation: str = "softmax") -> None:
        super().__init__()
        self.positive_class = int(positive_class)
        self.activation = activation

    def evidence(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-voxel log-odds of the positive class, ``(B, N)`` from maps ``(B, C, *spatial)``."""
        return voxel_log_odds(maps.flatten(2), self.positive_class, self.activation)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        logits = maps.flatten(2)
        index = self.evidence(maps).argmax(dim=1)
        return logits.gather(2, index[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(2)

    def patch_reduction(self, cached: torch.Tensor) -> "BoxedMaxPool":
        """This head on copies of ``cached`` ``(1, C, *spatial)`` that each differ inside one box (incremental occlusion)."""
        return BoxedMaxPool(self, cached)


class BoxedMaxPool:
    """:class:`VoxelMaxPool` on N copies of a cached map, copy ``i`` replaced inside one box by ``values[i]``.

    The same logits as the head on the whole copies, without building them: the best voxel of a copy is
    either the best inside its box (from the box's values) or the best of the cached map outside the box,
    which is the first voxel of the cached map's ranking that the box does not hold. Ties go to the voxel
    first in memory order, as ``argmax``'s do (a box's own order is the map's order restricted to it).
    """

    def __init__(self, head: VoxelMaxPool, cached: torch.Tensor) -> None:
        self.head = head
        self.shape = tuple(cached.shape[2:])
        self.logits = cached[0].flatten(1)
        evidence = head.evidence(cached)[0].numpy()
        self.ranking = np.argsort(-evidence, kind="stable")  # stable: equal evidence keeps memory order
        self.ranked_evidence = evidence[self.ranking]
        self.ranked_voxels = np.stack(np.unravel_index(self.ranking, self.shape), axis=1).astype(np.int32)

    @property
    def deciding_voxel(self) -> tuple[int, ...]:
        """The voxel whose logits the cached map's case logits are."""
        return tuple(int(v) for v in self.ranked_voxels[0])

    def __call__(self, values: Sequence[torch.Tensor], starts: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """Case logits ``(N, C)`` of the copies: copy ``i`` holds ``values[i]`` ``(C, *size_i)`` in the box at ``starts[i]``."""
        logits = []
        for value, start in zip(values, starts):
            size = tuple(value.shape[1:])
            evidence = self.head.evidence(value[None])[0]
            inside = int(evidence.argmax())
            outside = self._best_outside(start, size)
            if outside is None or self._beats(evidence[inside].item(), start, size, inside, outside):
                logits.append(value.flatten(1)[:, inside])
            else:
                logits.append(self.logits[:, self.ranking[outside]])
        return torch.stack(logits)

    def _beats(self, inside_evidence: float, start: tuple, size: tuple, inside: int, outside: int) -> bool:
        """Whether the box's best voxel wins over the cached best outside the box (ties: memory order)."""
        outside_evidence = float(self.ranked_evidence[outside])
        if inside_evidence != outside_evidence:
            return inside_evidence > outside_evidence
        voxel = tuple(s + i for s, i in zip(start, np.unravel_index(inside, size)))
        return int(np.ravel_multi_index(voxel, self.shape)) < int(self.ranking[outside])

    def _best_outside(self, start: tuple, size: tuple) -> Optional[int]:
        """Rank of the cached map's best voxel outside the box (None if the box holds them all)."""
        low, high = np.asarray(start, dtype=np.int32), np.asarray(start, dtype=np.int32) + np.asarray(size, dtype=np.int32)
        begin, step = 0, 1024
        while begin < len(self.ranking):
            voxels = self.ranked_voxels[begin:begin + step]
            held = ((voxels >= low) & (voxels < high)).all(axis=1)
            if not held.all():
                return begin + int(np.argmin(held))
            begin, step = begin + step, step * 4
        return None


def voxel_log_odds(logits: torch.Tensor, positive_class: int, activation: str) -> torch.Tensor:
    """Per-voxel log-odds of ``positive_class``, ``(B, N)`` from flattened logits ``(B, C, N)``."""
    positive = logits[:, positive_class]
    if activation == "sigmoid" or logits.shape[1] == 1:
        return positive
    others = torch.cat([logits[:, :positive_class], logits[:, positive_class + 1:]], dim=1)
    return positive - torch.logsumexp(others, dim=1)


# torch.fx records calls to this function as one node instead of tracing into its shape test, so the
# pooled classifier can be traced (incremental occlusion needs a trace).
torch.fx.wrap("voxel_log_odds")


def pooled_layer_name(layer: str | None) -> str | None:
    """A layer path of the bundle's network as seen from the wrapping head."""
    return None if not layer else f"{_DENSE}.{layer}"
