"""Gradient-family explainers: vanilla gradient, SmoothGrad, Integrated Gradients."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..progress import Stage
from ..targets import TargetFn
from .base import Explainer, batched

__all__ = ["InputGradient", "SmoothGrad", "IntegratedGradients"]


def _input_gradients(network: torch.nn.Module, inputs: torch.Tensor, target: TargetFn) -> torch.Tensor:
    """d target / d inputs for a batch, one backward pass."""
    with torch.enable_grad():
        inputs = inputs.detach().requires_grad_(True)
        scores = target(network(inputs))
        (gradients,) = torch.autograd.grad(scores.sum(), inputs)
    return gradients


class InputGradient(Explainer):
    """Vanilla gradient (saliency): magnitude of the target's gradient with respect to each voxel.

    Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshop 2014.
    """

    key = "gradient"
    title = "Gradient"
    reference = "Simonyan et al., ICLR Workshop 2014 (arXiv:1312.6034)"

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        maps = []
        for part in batched(inputs.shape[0], self.internal_batch_size):
            maps.append(_input_gradients(self.network, inputs[part], target).abs().amax(dim=1, keepdim=True))
            if stage is not None:
                stage.report(part.stop / inputs.shape[0], self.title)
        return torch.cat(maps)


class SmoothGrad(Explainer):
    """SmoothGrad: the gradient averaged over noisy copies of the input, then its magnitude.

    Smilkov et al., "SmoothGrad: removing noise by adding noise", ICML Workshop 2017. Noise has a
    standard deviation of ``noise_level`` times the input's intensity range (the paper suggests 10–20 %).
    """

    key = "smoothgrad"
    title = "SmoothGrad"
    reference = "Smilkov et al., ICML Workshop 2017 (arXiv:1706.03825)"

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None, internal_batch_size: int = 4,
                 n_samples: int = 16, noise_level: float = 0.15, seed: int = 0) -> None:
        super().__init__(network, target_layer, internal_batch_size)
        self.n_samples = int(n_samples)
        self.noise_level = float(noise_level)
        self.seed = int(seed)

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        maps = []
        for index, sample in enumerate(inputs):
            sigma = self.noise_level * float(sample.max() - sample.min())
            total = torch.zeros_like(sample)
            for part in batched(self.n_samples, self.internal_batch_size):
                count = part.stop - part.start
                noise = torch.randn((count, *sample.shape), generator=generator) * sigma
                total += _input_gradients(self.network, sample.unsqueeze(0) + noise, target).sum(dim=0)
                if stage is not None:
                    stage.report((index + part.stop / self.n_samples) / inputs.shape[0], self.title)
            maps.append((total / self.n_samples).abs().amax(dim=0, keepdim=True))
        return torch.stack(maps)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "n_samples": self.n_samples, "noise_level": self.noise_level, "seed": self.seed}


class IntegratedGradients(Explainer):
    """Integrated Gradients from a background baseline, computed with Captum.

    Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017. The baseline is
    the image's own background value (its minimum after normalisation: air or outside the head), an
    in-distribution "nothing here" rather than a zero that means mid-grey after z-scoring.
    """

    key = "ig"
    title = "Integrated Gradients"
    reference = "Sundararajan et al., ICML 2017 (arXiv:1703.01365)"
    signed = True

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None, internal_batch_size: int = 4,
                 n_steps: int = 32) -> None:
        super().__init__(network, target_layer, internal_batch_size)
        self.n_steps = int(n_steps)

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return target(self.network(batch))

        explainer = CaptumIG(forward)
        maps = []
        for index, sample in enumerate(inputs):
            sample = sample.unsqueeze(0)
            baseline = torch.full_like(sample, float(sample.min()))
            with torch.enable_grad():
                attribution = explainer.attribute(
                    sample, baselines=baseline, n_steps=self.n_steps, internal_batch_size=self.internal_batch_size
                )
            maps.append(attribution.detach().sum(dim=1, keepdim=True))
            if stage is not None:
                stage.report((index + 1) / inputs.shape[0], self.title)
        return torch.cat(maps)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "n_steps": self.n_steps, "baseline": "image minimum (background)"}
