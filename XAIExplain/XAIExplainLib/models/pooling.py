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

import torch
import torch.fx
from torch import nn

__all__ = ["POOLINGS", "MaxPooledClassifier", "pooled_layer_name"]

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
        self.positive_class = int(positive_class)
        self.activation = activation

    def voxel_evidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-voxel log-odds of the positive class, ``(B, N)`` from flattened logits ``(B, C, N)``."""
        return voxel_log_odds(logits, self.positive_class, self.activation)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Case logits ``(B, C)`` from dense logit maps ``(B, C, *spatial)``."""
        logits = maps.flatten(2)
        index = self.voxel_evidence(logits).argmax(dim=1)
        return logits.gather(2, index[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.dense(x))


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
