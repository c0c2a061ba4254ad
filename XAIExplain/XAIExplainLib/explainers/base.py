"""The interface every explainer implements, N-D written once.

An explainer is built from a network (and, for the CAM family, the name of a layer) and its
:meth:`Explainer.attribute` maps an input batch ``[B, C, *spatial]`` and a target function to a map
``[B, 1, *spatial]`` on the same grid. Parameters are plain attributes so they can be recorded as
provenance. Batching of many forward passes goes through ``internal_batch_size``, as in Captum; left at
None, the batch is as large as ``memory_budget_mb`` holds (:mod:`.budget`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator, Optional

import torch

from ..errors import XAIInputError, XAIModelError
from ..progress import Stage
from ..targets import TargetFn
from .budget import DEFAULT_MEMORY_BUDGET_MB, batch_size_for

__all__ = ["Explainer", "batched"]


class Explainer(ABC):
    """Base class: ``attribute(inputs, target) -> map``."""

    #: Short identifier used on the command line (``gradcam``, ``ig``…).
    key: ClassVar[str]
    #: Human-readable name.
    title: ClassVar[str]
    #: The paper the method comes from.
    reference: ClassVar[str]
    #: Whether the map is signed (positive = evidence for the target) or a non-negative magnitude.
    signed: ClassVar[bool] = False
    #: Whether the method needs a named layer (CAM family).
    needs_layer: ClassVar[bool] = False

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None,
                 internal_batch_size: Optional[int] = None, memory_budget_mb: Optional[float] = None) -> None:
        self.network = network
        self.target_layer = target_layer
        self.internal_batch_size = None if internal_batch_size is None else max(1, int(internal_batch_size))
        self.memory_budget_mb = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
        if self.memory_budget_mb <= 0:
            raise XAIInputError(f"The memory budget must be positive, not {memory_budget_mb} MB.")
        if self.needs_layer:
            self.layer = resolve_layer(network, target_layer, self.title)

    @abstractmethod
    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        """Return the attribution map ``[B, 1, *spatial]`` for ``inputs`` ``[B, C, *spatial]``."""

    def batch_size(self, sample: torch.Tensor, copies: int, backward: bool = True) -> int:
        """Copies of ``sample`` per forward (and backward) pass, of ``copies`` in all: ``internal_batch_size``,
        or what the memory budget holds."""
        if self.internal_batch_size is not None:
            return self.internal_batch_size
        return batch_size_for(self.network, sample, self.memory_budget_mb, backward, copies=copies)

    def parameters(self) -> dict[str, Any]:
        """Parameters worth recording with the result."""
        params: dict[str, Any] = ({"internal_batch_size": self.internal_batch_size} if self.internal_batch_size is not None
                                  else {"memory_budget_mb": self.memory_budget_mb})
        if self.needs_layer:
            params["target_layer"] = self.target_layer
        return params

    def value_meaning(self) -> str:
        return "signed attribution (positive supports the target)" if self.signed else "non-negative relevance"


def resolve_layer(network: torch.nn.Module, name: Optional[str], method: str) -> torch.nn.Module:
    """The sub-module ``name`` of ``network``; a clear error if it is missing or cannot be hooked."""
    if isinstance(network, torch.jit.ScriptModule):
        raise XAIModelError(
            f"{method} needs hooks on a layer, which TorchScript models do not allow; "
            f"use gradient, smoothgrad, ig or occlusion with this model."
        )
    if not name:
        raise XAIModelError(f"{method} needs a target layer: the model card has no cam_target_layer.")
    try:
        return network.get_submodule(name)
    except AttributeError:
        raise XAIModelError(f"{method}: the network has no layer named '{name}' (cam_target_layer).") from None


def batched(total: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` of at most ``batch_size`` items."""
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))
