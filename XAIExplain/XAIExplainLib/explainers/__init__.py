"""Explanation methods, one interface: ``Explainer(network, target_layer).attribute(x, target)``."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import XAIInputError
from .base import Explainer
from .cam import GradCAM, GradCAMpp
from .gradients import InputGradient, IntegratedGradients, SmoothGrad
from .occlusion import Occlusion

__all__ = ["Explainer", "GradCAM", "GradCAMpp", "InputGradient", "SmoothGrad", "IntegratedGradients",
           "Occlusion", "EXPLAINERS", "make_explainer"]

#: Every method by its command-line key, in the order users see them.
EXPLAINERS: dict[str, type[Explainer]] = {
    cls.key: cls for cls in (GradCAM, GradCAMpp, InputGradient, SmoothGrad, IntegratedGradients, Occlusion)
}


def make_explainer(method: str, network: torch.nn.Module, target_layer: Optional[str] = None, **params: Any) -> Explainer:
    """Build the explainer registered under ``method`` with its parameters."""
    if method not in EXPLAINERS:
        raise XAIInputError(f"Unknown explanation method '{method}'; choose one of {', '.join(EXPLAINERS)}.")
    return EXPLAINERS[method](network, target_layer=target_layer, **params)
