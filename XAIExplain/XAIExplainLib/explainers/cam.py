"""Class activation maps: Grad-CAM and Grad-CAM++.

Both weight the feature maps ``A`` of one layer by the gradient of the target score with respect to
them, keep the positive part and upsample to the input grid. Only the gradient down to that layer is
computed (``torch.autograd.grad`` on the captured activation), not down to the input. Given a
:class:`LayerRecording` of the same input (a forward pass kept with its graph), no forward pass is run:
another target class costs one backward pass to the layer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..progress import Stage
from ..targets import TargetFn
from .base import Explainer, resolve_layer

__all__ = ["GradCAM", "GradCAMpp", "LayerRecording", "scale_to_unit"]


class LayerRecording:
    """One forward pass of ``network`` on ``inputs``, kept with its autograd graph and ``layer``'s activation."""

    def __init__(self, network: torch.nn.Module, layer_name: str, inputs: torch.Tensor) -> None:
        self.network, self.layer_name, self.inputs = network, layer_name, inputs
        captured: list[torch.Tensor] = []

        def capture(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            # With frozen weights nothing before the layer needs a graph: the activation starts one, so only
            # the layers after it keep what their backward pass needs.
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            captured.append(output)
            return output

        handle = resolve_layer(network, layer_name, "Grad-CAM").register_forward_hook(capture)
        try:
            with torch.enable_grad():
                self.output = network(inputs)
        finally:
            handle.remove()
        self.activation = captured[-1]

    def covers(self, network: torch.nn.Module, layer_name: Optional[str], inputs: torch.Tensor) -> bool:
        """Whether this recording is of ``network``'s ``layer_name`` on this very ``inputs`` tensor."""
        return network is self.network and layer_name == self.layer_name and inputs is self.inputs

    def gradients(self, target: TargetFn, keep_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Activations, d target / d activations and the scores, by one backward pass.

        ``keep_graph``: keep the graph for other targets (False frees it as the backward pass goes).
        """
        with torch.enable_grad():
            scores = target(self.output)
            (gradients,) = torch.autograd.grad(scores.sum(), self.activation, retain_graph=keep_graph)
        return self.activation.detach(), gradients, scores.detach()


class _CAMBase(Explainer):
    needs_layer = True
    #: A forward pass of the network on the input it will be asked about, kept (set by the case cache).
    recording: Optional[LayerRecording] = None

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        return scale_to_unit(self.unscaled_maps(inputs, target, stage))

    def unscaled_maps(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        """The maps on the input grid before each is scaled to 0..1 (windowed explanations add them up first)."""
        spatial = inputs.shape[2:]
        if self.recording is not None and self.recording.covers(self.network, self.target_layer, inputs):
            return _upsample(self._combine(*self.recording.gradients(target)), spatial)
        maps = []
        size = self.batch_size(inputs[:1], copies=inputs.shape[0])
        for i in range(0, inputs.shape[0], size):
            chunk = inputs[i : i + size]
            cam = self._combine(*LayerRecording(self.network, self.target_layer, chunk).gradients(target, keep_graph=False))
            maps.append(_upsample(cam, spatial))
            if stage is not None:
                stage.report((i + len(chunk)) / inputs.shape[0], self.title)
        return torch.cat(maps)

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_meaning(self) -> str:
        return "class activation, scaled to 0..1 per case (1 = strongest evidence)"


class GradCAM(_CAMBase):
    """Grad-CAM: channel weights are the spatially averaged gradients.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.
    """

    key = "gradcam"
    title = "Grad-CAM"
    reference = "Selvaraju et al., ICCV 2017 (arXiv:1610.02391)"

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, c = gradients.shape[:2]
        weights = gradients.reshape(b, c, -1).mean(dim=2)
        weights = weights.reshape(b, c, *([1] * (gradients.dim() - 2)))
        return F.relu((weights * activations).sum(dim=1, keepdim=True))


class GradCAMpp(_CAMBase):
    """Grad-CAM++: pixel-wise weighting of positive gradients, better for several instances.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
    Convolutional Networks", WACV 2018. Higher-order derivatives use the exponential-score closed form
    of the paper (Eq. 19), as in MONAI's ``GradCAMpp``.
    """

    key = "gradcampp"
    title = "Grad-CAM++"
    reference = "Chattopadhay et al., WACV 2018 (arXiv:1710.11063)"

    def _combine(self, activations: torch.Tensor, gradients: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, c = gradients.shape[:2]
        view = (b, c, *([1] * (gradients.dim() - 2)))
        grad2 = gradients.pow(2)
        grad3 = gradients.pow(3)
        sum_activations = activations.reshape(b, c, -1).sum(dim=2).reshape(view)
        denominator = 2 * grad2 + sum_activations * grad3
        denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = grad2 / denominator
        # d(exp(S))/dA = exp(S) dS/dA; scores are clamped so exp() stays finite for large logits.
        positive = F.relu(scores.clamp(max=50).exp().reshape(b, *([1] * (gradients.dim() - 1))) * gradients)
        weights = (alpha * positive).reshape(b, c, -1).sum(dim=2).reshape(view)
        return F.relu((weights * activations).sum(dim=1, keepdim=True))


def _upsample(cam: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
    if cam.shape[2:] == spatial:
        return cam
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    return F.interpolate(cam, size=tuple(spatial), mode=mode, align_corners=False)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to 0..1 (a map that is zero everywhere stays zero)."""
    b = maps.shape[0]
    peak = maps.reshape(b, -1).amax(dim=1).reshape(b, *([1] * (maps.dim() - 1)))
    return torch.where(peak > 0, maps / peak.clamp(min=1e-12), torch.zeros_like(maps))
