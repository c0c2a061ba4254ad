"""Networks whose answer is known, for the robustness tests (imported by ``test_robustness*.py``).

* :class:`RegionNet` reads one region of the model grid only: its "lesion" logit is the mean
  intensity there, so the true explanation is that region.
* :class:`SobelExplainer` poses the image's edge magnitude as an explanation: it ignores the model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from XAIExplainLib.explainers import Explainer


class RegionNet(torch.nn.Module):
    """Logits ``[-s, s]`` with ``s`` the mean (ReLU'd, scaled) intensity inside a fixed region."""

    def __init__(self, region: torch.Tensor, scale: float = 4.0) -> None:
        super().__init__()
        self.features = torch.nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.features.weight.fill_(scale)
            self.features.bias.fill_(-scale)
        self.register_buffer("region", region.to(torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.features(x))
        s = (a * self.region).sum(dim=(2, 3, 4)) / self.region.sum()
        return torch.cat([-s, s], dim=1)


def with_network(model, network: torch.nn.Module, cam_target_layer: str | None = None):
    """A copy of a loaded test model with another network (and CAM layer)."""
    spec = dataclasses.replace(model.spec, cam_target_layer=cam_target_layer or model.spec.cam_target_layer)
    return dataclasses.replace(model, network=network.eval(), spec=spec)


class SobelExplainer(Explainer):
    """Edge magnitude of the input: looks like a saliency map, knows nothing of the model."""

    key = "sobel"
    title = "Sobel edges"
    reference = "an image-only edge map posing as an explanation (Adebayo et al. 2018, Fig. 1)"

    def attribute(self, inputs, target, stage=None):
        maps = []
        for sample in inputs[:, 0].numpy():
            magnitude = np.sqrt(sum(ndimage.sobel(sample, axis=a) ** 2 for a in range(sample.ndim)))
            maps.append(torch.from_numpy(magnitude.astype(np.float32)))
        return torch.stack(maps)[:, None]


class EmptyExplainer(SobelExplainer):
    """A map that is zero everywhere, as Grad-CAM++ gives on a layer of negative activations."""

    key = "empty"
    title = "Empty map"

    def attribute(self, inputs, target, stage=None):
        return torch.zeros_like(inputs)
