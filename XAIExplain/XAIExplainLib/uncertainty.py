"""Predictive uncertainty: MC dropout, test-time augmentation, and the measures computed from samples.

* MC dropout — Gal and Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016: dropout layers
  stay active at inference and N stochastic passes are treated as samples of the predictive
  distribution.
* Test-time augmentation — Wang et al., "Aleatoric uncertainty estimation with test-time augmentation
  for medical image segmentation", Neurocomputing 2019: flips and small intensity changes, each
  prediction mapped back before the samples are combined.
* Measures — predictive entropy of the mean prediction and mutual information between prediction and
  model parameters (BALD; Houlsby et al., 2011), per voxel for segmentation, per case for classifiers.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from .errors import XAIModelError
from .explainers.base import batched
from .explainers.budget import batch_size_for
from .progress import Stage

__all__ = [
    "UNCERTAINTY_METHODS",
    "Augmentation",
    "tta_augmentations",
    "mc_dropout",
    "sample_probabilities",
    "entropy",
    "mutual_information",
    "classification_summary",
]

UNCERTAINTY_METHODS = ("none", "mc-dropout", "tta", "ensemble")
_DROPOUT_TYPES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)


@dataclass(frozen=True)
class Augmentation:
    """A flip of some spatial axes plus an intensity change ``x * scale + shift`` (invertible on maps)."""

    flip_axes: tuple[int, ...] = ()
    scale: float = 1.0
    shift: float = 0.0

    def apply(self, inputs: torch.Tensor) -> torch.Tensor:
        out = inputs * self.scale + self.shift
        return out.flip(dims=[a + 2 for a in self.flip_axes]) if self.flip_axes else out

    def invert_spatial(self, outputs: torch.Tensor) -> torch.Tensor:
        """Undo the flip on an output ``[B, C, *spatial]`` (a no-op for ``[B, K]`` class outputs)."""
        if not self.flip_axes or outputs.dim() <= 2:
            return outputs
        return outputs.flip(dims=[a + 2 for a in self.flip_axes])

    def describe(self) -> str:
        flips = "+".join("xyz"[a] for a in self.flip_axes) or "none"
        return f"flip {flips}, x{self.scale:.3f}{self.shift:+.3f}"


def tta_augmentations(n: int, spatial_dims: int, seed: int, intensity_jitter: float = 0.05) -> list[Augmentation]:
    """``n`` augmentations: the identity first, then every flip combination in turn with a small random
    intensity scale and shift (± ``intensity_jitter`` of the normalised range)."""
    generator = torch.Generator().manual_seed(seed)
    flips = [c for r in range(spatial_dims + 1) for c in itertools.combinations(range(spatial_dims), r)]
    augmentations = [Augmentation()]
    for i in range(1, n):
        jitter = (torch.rand(2, generator=generator) * 2 - 1) * intensity_jitter
        augmentations.append(Augmentation(flips[i % len(flips)], 1.0 + float(jitter[0]), float(jitter[1])))
    return augmentations


@contextlib.contextmanager
def mc_dropout(network: torch.nn.Module) -> Iterator[None]:
    """Switch only the dropout layers to training mode (normalisation layers keep their statistics)."""
    layers = [m for m in network.modules() if isinstance(m, _DROPOUT_TYPES)]
    if not layers or all(getattr(m, "p", 0.0) == 0.0 for m in layers):
        raise XAIModelError(
            "This model has no active dropout layers, so MC dropout cannot sample it; use --uncertainty tta."
        )
    previous = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield
    finally:
        for m, mode in zip(layers, previous):
            m.train(mode)


def sample_probabilities(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    method: str,
    network: torch.nn.Module,
    n_samples: int,
    seed: int,
    batch_size: Optional[int] = None,
    stage: Optional[Stage] = None,
) -> torch.Tensor:
    """``n_samples`` predictions ``[N, K(, *spatial)]`` of one case ``inputs`` ``[1, C, *spatial]``.

    ``probabilities`` maps a batch to class probabilities (it may use sliding windows). Samples go
    through the network ``batch_size`` at a time (default: as many as the memory budget holds).
    """
    if method not in ("mc-dropout", "tta"):
        raise ValueError(f"unknown sampling method {method!r}")
    size = batch_size or batch_size_for(network, inputs, backward=False, copies=n_samples)
    label = "MC dropout" if method == "mc-dropout" else "test-time augmentation"
    augmentations = tta_augmentations(n_samples, inputs.dim() - 2, seed) if method == "tta" else []
    samples = []
    context = mc_dropout(network) if method == "mc-dropout" else contextlib.nullcontext()
    torch.manual_seed(seed)
    with context, torch.no_grad():
        for part in batched(n_samples, size):
            if method == "mc-dropout":
                samples.append(probabilities(inputs.expand(part.stop - part.start, *inputs.shape[1:])))
            else:
                chosen = augmentations[part]
                outputs = probabilities(torch.cat([augmentation.apply(inputs) for augmentation in chosen]))
                samples += [augmentation.invert_spatial(outputs[i: i + 1]) for i, augmentation in enumerate(chosen)]
            if stage is not None:
                stage.report(part.stop / n_samples, f"{label} {part.stop}/{n_samples}")
    return torch.cat(samples)


def entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along the class axis."""
    p = probabilities.clamp(min=1e-12)
    return -(p * p.log()).sum(dim=dim)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """BALD: entropy of the mean prediction minus the mean entropy of the samples ``[N, K, ...]``."""
    return (entropy(samples.mean(dim=0, keepdim=True)) - entropy(samples).mean(dim=0, keepdim=True))[0].clamp(min=0)


def classification_summary(samples: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    """Spread of a classifier's probabilities over ``[N, K]`` samples, as plain JSON values."""
    mean = samples.mean(dim=0)
    std = samples.std(dim=0, unbiased=samples.shape[0] > 1)
    predicted = int(mean.argmax())
    return {
        "samples": int(samples.shape[0]),
        "mean_probabilities": {name: float(p) for name, p in zip(class_names, mean)},
        "std_probabilities": {name: float(s) for name, s in zip(class_names, std)},
        "predicted_class_std": float(std[predicted]),
        "predicted_class_interval_95": [float(samples[:, predicted].quantile(0.025)), float(samples[:, predicted].quantile(0.975))],
        "predictive_entropy": float(entropy(mean.unsqueeze(0))[0]),
        "mutual_information": float(mutual_information(samples.unsqueeze(-1)).squeeze()),
        "agreement": float((samples.argmax(dim=1) == predicted).float().mean()),
    }
