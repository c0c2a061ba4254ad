"""Which layer of a network Grad-CAM should look at, when the model card does not say.

For a classifier, the last convolution (Selvaraju et al., "Grad-CAM", ICCV 2017). For a segmentation
network, the convolution with the coarsest output grid, its bottleneck, where the class evidence of an
encoder-decoder is most abstract (Vinogradova et al., "Towards Interpretable Semantic Segmentation via
Gradient-weighted Class Activation Mapping", AAAI 2020); the last of those in execution order.
The output shapes come from one pass on PyTorch's ``meta`` device: no memory, no arithmetic.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

__all__ = ["suggest_cam_layers"]


def suggest_cam_layers(network: torch.nn.Module, task: str, channels: int, size: Sequence[int],
                       count: int = 3) -> list[str]:
    """Up to ``count`` layer names, best first; empty when the network cannot be traced on ``meta``."""
    if isinstance(network, torch.jit.ScriptModule):
        return []
    try:
        skeleton = copy.deepcopy(network).to("meta")
    except Exception:  # a module that cannot be copied or moved: no suggestion rather than a failure
        return []
    outputs: list[tuple[int, str, int]] = []  # (order, name, voxels of the output grid)
    handles = []
    for name, module in skeleton.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd) and name:
            def record(_module, _inputs, output, name=name):
                if isinstance(output, torch.Tensor) and output.dim() >= 3:
                    outputs.append((len(outputs), name, int(torch.tensor(output.shape[2:]).prod())))
            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            skeleton(torch.zeros(1, channels, *size, device="meta"))
    except Exception:
        return []
    finally:
        for handle in handles:
            handle.remove()
    seen: dict[str, tuple[int, int]] = {}
    for order, name, voxels in outputs:
        seen[name] = (order, voxels)  # a layer called twice counts at its last call
    ranked = sorted(seen, key=lambda n: (-seen[n][0],) if task != "segmentation" else (seen[n][1], -seen[n][0]))
    return ranked[:count]
