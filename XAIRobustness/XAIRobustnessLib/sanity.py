"""Model-parameter randomisation test: does the explanation depend on what the model learned?

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv:1810.03292), cascading
randomisation: starting from the output, the network's layers are re-initialised one block after
another (a copy — the loaded model is never touched) and the explanation of the same case and target
is recomputed after each step. An explanation that reflects the model must change as its weights are
destroyed; one that stays alike (an edge detector posing as an explanation) explains the image, not
the model.

Similarity to the original map is the Spearman rank correlation of the maps' magnitudes and SSIM,
inside the anatomy. **Pass** when, with every layer randomised, Spearman(|·|) is below
:data:`PASS_SPEARMAN` (0.5: the ranking shares less than a quarter of its variance with the
original). Blocks are the network's parametrised leaf modules in registration order, read from the
output side and grouped into at most ``max_steps`` steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import SimpleITK as sitk
import torch

from XAIExplainLib.errors import XAIInputError, XAIModelError
from XAIExplainLib.explainers import Explainer, make_explainer
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.pipeline import explainer_params
from XAIExplainLib.progress import CancelToken, ProgressCallback, Stage

from .reference import Reference, explain_inputs, explain_reference
from .similarity import spearman, ssim, top_k_iou

__all__ = ["PASS_SPEARMAN", "SanityResult", "randomisation_blocks", "sanity_check", "sanity_checks"]

PASS_SPEARMAN = 0.5


@dataclass
class SanityResult:
    """The randomisation curve of one method on one case, and its verdict."""

    method: str
    method_name: str
    steps: list[dict]  # step 0 = original; then one per randomised block, from the output side
    passed: bool
    final_spearman: float
    threshold: float = PASS_SPEARMAN
    maps: list[torch.Tensor] = field(default_factory=list, repr=False)  # model grid, one per step
    empty_map: bool = False  # the original map is constant in the anatomy: nothing to check

    @property
    def verdict(self) -> str:
        if self.empty_map:
            return (f"{self.method_name} FAILS the randomisation check: its map of the trained model is constant "
                    "(empty) inside the anatomy, so it shows nothing that randomising the weights could destroy.")
        if self.passed:
            return (f"{self.method_name} passes the randomisation check: with all weights randomised its map keeps "
                    f"Spearman {self.final_spearman:.2f} < {self.threshold:g} with the original, so it depends on "
                    f"what the model learned.")
        return (f"{self.method_name} FAILS the randomisation check: with all weights randomised its map still has "
                f"Spearman {self.final_spearman:.2f} ≥ {self.threshold:g} with the original — it shows the image, "
                f"not the model's reasoning. Do not use it to explain this model.")

    def to_json(self) -> dict:
        return {"method": self.method, "method_name": self.method_name, "passed": self.passed,
                "final_spearman": self.final_spearman, "threshold_spearman": self.threshold,
                "verdict": self.verdict, "steps": self.steps, "empty_map": self.empty_map,
                "reference": "Adebayo et al., NeurIPS 2018 (arXiv:1810.03292), cascading randomisation"}


def randomisation_blocks(network: torch.nn.Module, max_steps: int = 8) -> list[list[str]]:
    """Names of parametrised leaf modules, from the output side, grouped into at most ``max_steps`` blocks."""
    leaves = [name for name, module in network.named_modules()
              if name and any(True for _ in module.parameters(recurse=False))]
    if not leaves:
        raise XAIModelError("The network has no parameters to randomise.")
    leaves.reverse()
    steps = max(1, min(max_steps, len(leaves)))
    bounds = [round(i * len(leaves) / steps) for i in range(steps + 1)]
    return [leaves[bounds[i]:bounds[i + 1]] for i in range(steps)]


def _reinitialise(module: torch.nn.Module) -> None:
    """The layer's own initialisation (``reset_parameters``), else Gaussian with the weights' own spread."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            std = float(parameter.std()) if parameter.numel() > 1 else 1.0
            parameter.normal_(0.0, std if std > 0 else 1.0)


def sanity_check(
    image: sitk.Image,
    model: LoadedModel,
    method: str = "gradcam",
    seed: int = 0,
    max_steps: int = 8,
    method_params: Optional[dict[str, Any]] = None,
    explainer_factory: Optional[Any] = None,
    reference: Optional[Reference] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    other_channels: Sequence[sitk.Image] = (),
) -> SanityResult:
    """Cascading randomisation of ``model`` for ``method`` on ``image``.

    ``explainer_factory(network) -> Explainer`` overrides how the explainer is built (tests use it to
    pose an image-only map as an explanation). Same ``seed``, same randomised weights.
    """
    stage = Stage(progress, cancel)
    reference = reference or explain_reference(image, model, method, seed, method_params, stage=stage.sub(0.0, 0.1),
                                               other_channels=other_channels)
    network = _copy(model.network)
    params = {"internal_batch_size": reference.chunk, **explainer_params(method, seed, method_params)}
    build = explainer_factory or (lambda net: make_explainer(method, net, model.spec.cam_target_layer, **params))
    original = _explain(model, build(model.network), reference)
    blocks = randomisation_blocks(network, max_steps)
    steps = [_step(0, "original", [], original, original, reference)]
    maps = [original]
    modules = dict(network.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, block in enumerate(blocks, start=1):
            stage.sub(0.1, 1.0).report((index - 1) / len(blocks), f"randomising {block[0]} …")
            for name in block:
                _reinitialise(modules[name])
            randomised = _explain(model, build(network), reference)
            maps.append(randomised)
            steps.append(_step(index, _block_label(block), block, original, randomised, reference))
    stage.report(1.0, "done")
    final = steps[-1]["spearman"]
    explainer = build(model.network)
    # A constant map "differs" from anything by rank correlation 0; it must not pass for that.
    inside = original[reference.anatomy]
    empty = bool(inside.numel() == 0 or inside.max() == inside.min())
    return SanityResult(method=method if explainer_factory is None else getattr(explainer, "key", method),
                        method_name=explainer.title, steps=steps, passed=final < PASS_SPEARMAN and not empty,
                        final_spearman=final, maps=maps, empty_map=empty)


def sanity_checks(image: sitk.Image, model: LoadedModel, methods: Sequence[str], seed: int = 0, max_steps: int = 8,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                  other_channels: Sequence[sitk.Image] = ()) -> dict[str, SanityResult]:
    """:func:`sanity_check` for several methods, one after the other."""
    if not methods:
        raise XAIInputError("Name at least one explanation method to check.")
    stage = Stage(progress, cancel)
    results = {}
    for i, method in enumerate(methods):
        sub = stage.sub(i / len(methods), (i + 1) / len(methods))
        results[method] = sanity_check(image, model, method, seed, max_steps, progress=_relay(sub), cancel=cancel,
                                       other_channels=other_channels)
    return results


def _relay(stage: Stage) -> ProgressCallback:
    return lambda fraction, message: stage.report(fraction, message)


def _copy(network: torch.nn.Module) -> torch.nn.Module:
    try:
        return copy.deepcopy(network).eval()
    except Exception as error:  # TorchScript modules that cannot be copied
        raise XAIModelError(f"The network cannot be copied for the randomisation check ({error}).") from None


def _explain(model: LoadedModel, explainer: Explainer, reference: Reference) -> torch.Tensor:
    return explain_inputs(model, explainer, reference.case.inputs, reference.target)[0].detach()


def _step(index: int, label: str, block: list[str], original: torch.Tensor, randomised: torch.Tensor,
          reference: Reference) -> dict:
    mask = reference.anatomy
    return {"step": index, "randomised": label, "modules": block,
            "spearman": spearman(original, randomised, mask, absolute=True),
            "ssim": ssim(original, randomised, mask, absolute=True),
            "topk_iou": top_k_iou(original, randomised, mask, absolute=True)}


def _block_label(block: list[str]) -> str:
    return block[0] if len(block) == 1 else f"{block[0]} … {block[-1]}"
