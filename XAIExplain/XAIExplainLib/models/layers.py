"""What a network is, found from one pass on PyTorch's ``meta`` device (no memory, no arithmetic; on the CPU
for a network that needs tensor values): the shape of what it returns, and which layer Grad-CAM should look at
when the model card does not say.

For a classifier, the last convolution (Selvaraju et al., "Grad-CAM", ICCV 2017). For a segmentation
network, the convolution with the coarsest output grid, its bottleneck, where the class evidence of an
encoder-decoder is most abstract (Vinogradova et al., "Towards Interpretable Semantic Segmentation via
Gradient-weighted Class Activation Mapping", AAAI 2020); the last of those in execution order.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

__all__ = ["NetworkTrace", "trace_network", "suggest_cam_layers", "rank_cam_layers"]


@dataclass
class NetworkTrace:
    """One meta-device pass: the output (a meta tensor, or whatever else the network returned) and each
    convolution's output grid size in voxels, in execution order (a layer called twice: its last call)."""

    output: Any
    convolutions: dict = field(default_factory=dict)  # name -> (order, voxels)


def trace_network(network: torch.nn.Module, channels: int, size: Sequence[int]) -> Optional[NetworkTrace]:
    """The pass on a ``(1, channels, *size)`` input, on ``meta``, or on the CPU for a network that computes
    with tensor values in its forward (SwinUNETR's attention masks); None when neither runs."""
    if isinstance(network, torch.jit.ScriptModule):
        return None
    for device in ("meta", "cpu"):
        try:
            skeleton = copy.deepcopy(network).to(device).eval()
        except Exception:  # a module that cannot be copied or moved: try the next device
            continue
        # Twice the window as well: a window whose bottleneck is one voxel cannot be normalised.
        for probe in (tuple(size), tuple(2 * n for n in size)):
            trace = _trace(skeleton, channels, probe, device)
            if trace is not None:
                return trace
    return None


def _trace(skeleton: torch.nn.Module, channels: int, size: Sequence[int], device: str) -> Optional[NetworkTrace]:
    trace = NetworkTrace(output=None)
    calls = itertools.count()
    handles = []
    for name, module in skeleton.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd) and name:
            def record(_module, _inputs, output, name=name):
                if isinstance(output, torch.Tensor) and output.dim() >= 3:
                    trace.convolutions[name] = (next(calls), int(torch.tensor(output.shape[2:]).prod()))
            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            output = skeleton(torch.zeros(1, channels, *size, device=device))
    except Exception:
        return None
    finally:
        for handle in handles:
            handle.remove()
    trace.output = output.to("meta") if isinstance(output, torch.Tensor) else output
    return trace


def suggest_cam_layers(network: torch.nn.Module, task: str, channels: int, size: Sequence[int],
                       count: int = 3) -> list[str]:
    """Up to ``count`` layer names, best first; empty when the network cannot be traced."""
    trace = trace_network(network, channels, size)
    return rank_cam_layers(trace, task, count) if trace is not None else []


def rank_cam_layers(trace: NetworkTrace, task: str, count: int = 3) -> list[str]:
    """The traced convolutions best suited to Grad-CAM, best first (see the module's docstring)."""
    seen = trace.convolutions
    if task == "segmentation":
        ranked = sorted(seen, key=lambda n: (seen[n][1], -seen[n][0]))
    else:
        ranked = sorted(seen, key=lambda n: -seen[n][0])
    return ranked[:count]
