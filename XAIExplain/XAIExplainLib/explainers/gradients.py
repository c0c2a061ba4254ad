"""Gradient-family explainers: vanilla gradient, SmoothGrad, Integrated Gradients.

SmoothGrad and Integrated Gradients need a weighted *sum* of input gradients over many copies of one
image. When the network reads its input only through convolutions (the usual first layer), that sum
is taken at the convolutions' outputs and carried back to the input once: a convolution's input
gradient is linear in its output gradient and does not depend on the input. The first layer's
backward pass, the most expensive one on a one-channel 3-D volume, is then paid once per map instead
of once per copy; the result is the same up to floating-point rounding.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np
import torch
import torch.fx

from ..errors import XAIInputError
from ..progress import Stage
from ..targets import TargetFn
from .base import Explainer, batched

__all__ = ["InputGradient", "SmoothGrad", "IntegratedGradients"]


_first_layers: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.nn.Module, ...]]" = weakref.WeakKeyDictionary()


def input_convolutions(network: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """The convolutions through which alone ``network`` reads its input (empty if it reads it otherwise)."""
    if network not in _first_layers:
        _first_layers[network] = _find_input_convolutions(network)
    return _first_layers[network]


def _find_input_convolutions(network: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    if isinstance(network, torch.jit.ScriptModule):
        return ()
    try:
        graph = torch.fx.symbolic_trace(network).graph
    except Exception:  # noqa: BLE001 - an untraceable network: take gradients the plain way
        return ()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return ()
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    convolutions = []
    for user in placeholders[0].users:
        module = network.get_submodule(user.target) if user.op == "call_module" else None
        if not (isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) and module.padding_mode == "zeros"
                and not isinstance(module.padding, str) and user.args == (placeholders[0],) and not user.kwargs
                and calls.count(user.target) == 1):  # a convolution called twice would need both outputs' gradients
            return ()
        convolutions.append(module)
    return tuple(convolutions)


_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def weighted_input_gradient(network: torch.nn.Module, inputs: torch.Tensor, weights: torch.Tensor,
                            target: TargetFn) -> torch.Tensor:
    """``sum_b weights[b] * d target(network(inputs))[b] / d inputs[b]``, ``[1, C, *spatial]``, one backward pass."""
    convolutions = input_convolutions(network)
    if not convolutions:
        gradients = input_gradients(network, inputs, target)
        return (gradients * weights.view(-1, *([1] * (inputs.dim() - 1)))).sum(dim=0, keepdim=True)
    outputs: dict[torch.nn.Module, torch.Tensor] = {}

    def keep_output(module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        outputs[module] = output.detach().requires_grad_(True)
        return outputs[module]

    handles = [m.register_forward_hook(keep_output) for m in convolutions]
    try:
        with torch.enable_grad():
            scores = target(network(inputs.detach()))
            gradients = torch.autograd.grad((scores * weights).sum(), [outputs[m] for m in convolutions])
    finally:
        for handle in handles:
            handle.remove()
    size = (1, *inputs.shape[1:])
    total = torch.zeros(size, dtype=inputs.dtype)
    for module, gradient in zip(convolutions, gradients):
        total += _CONV_INPUT_GRAD[inputs.dim() - 2](size, module.weight.detach(), gradient.sum(dim=0, keepdim=True),
                                                     module.stride, module.padding, module.dilation, module.groups)
    return total


def input_gradients(network: torch.nn.Module, inputs: torch.Tensor, target: TargetFn) -> torch.Tensor:
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
        for part in batched(inputs.shape[0], self.batch_size(inputs[:1], copies=inputs.shape[0])):
            maps.append(input_gradients(self.network, inputs[part], target).abs().amax(dim=1, keepdim=True))
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

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None,
                 internal_batch_size: Optional[int] = None, memory_budget_mb: Optional[float] = None,
                 n_samples: int = 16, noise_level: float = 0.15, seed: int = 0) -> None:
        super().__init__(network, target_layer, internal_batch_size, memory_budget_mb)
        self.n_samples = int(n_samples)
        self.noise_level = float(noise_level)
        self.seed = int(seed)

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        maps = []
        for index, sample in enumerate(inputs):
            sigma = self.noise_level * float(sample.max() - sample.min())
            total = torch.zeros_like(sample)
            for part in batched(self.n_samples, self.batch_size(sample.unsqueeze(0), copies=self.n_samples)):
                count = part.stop - part.start
                noise = torch.randn((count, *sample.shape), generator=generator) * sigma
                total += weighted_input_gradient(self.network, sample.unsqueeze(0) + noise, torch.ones(count), target)[0]
                if stage is not None:
                    stage.report((index + part.stop / self.n_samples) / inputs.shape[0], self.title)
            maps.append((total / self.n_samples).abs().amax(dim=0, keepdim=True))
        return torch.stack(maps)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "n_samples": self.n_samples, "noise_level": self.noise_level, "seed": self.seed}


class IntegratedGradients(Explainer):
    """Integrated Gradients from a background baseline.

    Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017. The path integral
    uses Gauss-Legendre nodes, as Captum's default does, and its steps go through the network in
    batches sized by the memory budget. The baseline is the image's own background value (its minimum
    after normalisation: air or outside the head), an in-distribution "nothing here" rather than a zero
    that means mid-grey after z-scoring.
    """

    key = "ig"
    title = "Integrated Gradients"
    reference = "Sundararajan et al., ICML 2017 (arXiv:1703.01365)"
    signed = True

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None,
                 internal_batch_size: Optional[int] = None, memory_budget_mb: Optional[float] = None,
                 n_steps: int = 32) -> None:
        super().__init__(network, target_layer, internal_batch_size, memory_budget_mb)
        if n_steps < 1:
            raise XAIInputError(f"Integrated Gradients needs at least one step, not {n_steps}.")
        self.n_steps = int(n_steps)

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        nodes, weights = np.polynomial.legendre.leggauss(self.n_steps)
        alphas = torch.from_numpy(0.5 * (nodes + 1)).to(inputs.dtype)
        step_weights = torch.from_numpy(0.5 * weights).to(inputs.dtype)
        maps = []
        for index, sample in enumerate(inputs):
            sample = sample.unsqueeze(0)
            baseline = torch.full_like(sample, float(sample.min()))
            delta = sample - baseline
            path_sum = torch.zeros_like(sample)
            view = (-1, *([1] * (sample.dim() - 1)))
            for part in batched(self.n_steps, self.batch_size(sample, copies=self.n_steps)):
                path_sum += weighted_input_gradient(self.network, baseline + alphas[part].view(view) * delta,
                                                    step_weights[part], target)
                if stage is not None:
                    stage.report((index + part.stop / self.n_steps) / inputs.shape[0], f"{self.title}: step {part.stop}/{self.n_steps}")
            maps.append((path_sum * delta).sum(dim=1, keepdim=True))
        return torch.cat(maps)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "n_steps": self.n_steps, "baseline": "image minimum (background)",
                "integral": "Gauss-Legendre"}
