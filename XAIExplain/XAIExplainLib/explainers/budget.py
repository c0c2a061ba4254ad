"""Batch sizes from a memory budget, measured on the network instead of guessed.

Methods that push many copies of one case through a network (Integrated Gradients' path steps,
SmoothGrad's noisy copies, MC-dropout and test-time-augmentation samples, robustness sweeps) batch them
as Captum's ``internal_batch_size`` does. Here the batch size follows from a budget: one forward pass
of a single copy with hooks on every leaf module measures the bytes of activations it produces, which
is what a backward pass keeps alive. The measurement is kept per network and input shape.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional

import torch

__all__ = ["DEFAULT_MEMORY_BUDGET_MB", "MAX_BATCH", "activation_bytes", "batch_size_for"]

#: What a batch of one method may take, by default (these machines have a few GB to spare).
DEFAULT_MEMORY_BUDGET_MB = 2048.0
#: Batches larger than this bring nothing on a few CPU cores and make progress and Cancel sluggish.
MAX_BATCH = 8
#: Without hooks (TorchScript): bytes per input voxel a small 3-D CNN keeps (about 32 float32 feature maps).
_FALLBACK_BYTES_PER_VOXEL = 4 * 32

_measured: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, int]]" = weakref.WeakKeyDictionary()


def activation_bytes(network: torch.nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one copy of ``sample`` ``[1 or B, C, *spatial]``."""
    shape = (tuple(sample.shape[1:]), sample.dtype)
    known = _measured.setdefault(network, {})
    if shape not in known:
        known[shape] = _measure(network, sample[:1])
    return known[shape]


def batch_size_for(network: torch.nn.Module, sample: torch.Tensor, memory_budget_mb: Optional[float] = None,
                   backward: bool = True, limit: int = MAX_BATCH, copies: Optional[int] = None) -> int:
    """How many copies of ``sample`` go through ``network`` at once within ``memory_budget_mb``.

    ``backward``: gradients are taken (activations and their gradients are alive together). ``copies``:
    how many there are in all (one copy needs no measurement).
    """
    if copies is not None and copies <= 1:
        return 1
    limit = min(limit, copies) if copies is not None else limit
    budget = (DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)) * 2**20
    if budget <= 0:
        raise ValueError(f"the memory budget must be positive, not {memory_budget_mb} MB")
    per_copy = activation_bytes(network, sample) * (2 if backward else 1) + sample[:1].nbytes
    return int(max(1, min(limit, budget // max(per_copy, 1))))


def _measure(network: torch.nn.Module, sample: torch.Tensor) -> int:
    if isinstance(network, torch.jit.ScriptModule):
        return math.prod(sample.shape[2:]) * _FALLBACK_BYTES_PER_VOXEL
    total = [0]

    def count(_module: torch.nn.Module, _inputs: tuple, output: object) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.nelement() * tensor.element_size()

    leaves = [m for m in network.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            network(sample)
    finally:
        for handle in handles:
            handle.remove()
    return max(total[0], math.prod(sample.shape[2:]) * 4)
