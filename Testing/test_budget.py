"""Batch sizes from a memory budget: measured on the network, bounded, and refused when nonsensical."""

from __future__ import annotations

import pytest
import torch

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.explainers import make_explainer
from XAIExplainLib.explainers.budget import MAX_BATCH, activation_bytes, batch_size_for


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 3, padding=1)).eval()


def test_activation_bytes_are_measured_from_the_layers_outputs():
    network = _network()
    small, large = torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 16, 16, 16)
    # conv (8 maps) + ReLU (8 maps) + conv (2 maps), float32
    assert activation_bytes(network, small) == (8 + 8 + 2) * 8 ** 3 * 4
    assert activation_bytes(network, large) == 8 * activation_bytes(network, small)


def test_the_budget_sets_the_batch_within_bounds():
    network, sample = _network(), torch.zeros(1, 1, 32, 32, 32)
    per_copy_mb = (2 * activation_bytes(network, sample) + sample.nbytes) / 2**20
    assert batch_size_for(network, sample, memory_budget_mb=3.5 * per_copy_mb) == 3
    assert batch_size_for(network, sample, memory_budget_mb=0.1 * per_copy_mb) == 1  # always at least one
    assert batch_size_for(network, sample, memory_budget_mb=1e6) == MAX_BATCH
    assert batch_size_for(network, sample, memory_budget_mb=1e6, copies=3) == 3
    assert batch_size_for(network, sample, backward=False, memory_budget_mb=3.5 * per_copy_mb) > 3


def test_a_non_positive_budget_is_refused():
    with pytest.raises(XAIInputError, match="memory budget must be positive"):
        make_explainer("ig", _network(), memory_budget_mb=0)
    with pytest.raises(ValueError, match="memory budget must be positive"):
        batch_size_for(_network(), torch.zeros(1, 1, 4, 4, 4), memory_budget_mb=-1, copies=4)


def test_provenance_records_the_budget_or_the_fixed_batch():
    assert make_explainer("ig", _network()).parameters()["memory_budget_mb"] == 2048
    assert make_explainer("ig", _network(), internal_batch_size=2).parameters()["internal_batch_size"] == 2


def test_occlusion_falls_back_to_full_inference_when_its_cache_exceeds_the_budget():
    """Incremental inference keeps every layer's output of the case: past the budget, full inference runs."""
    from XAIExplainLib.targets import region_logit_sum

    network, image = _network(), torch.randn(1, 1, 16, 16, 16)
    target = region_logit_sum(1, torch.ones(16, 16, 16))
    cache_mb = activation_bytes(network, image) / 2**20
    tight = make_explainer("occlusion", network, memory_budget_mb=cache_mb / 2, window=8, mode="exact")
    roomy = make_explainer("occlusion", network, memory_budget_mb=cache_mb * 4, window=8, mode="exact")
    small, large = tight.attribute(image, target), roomy.attribute(image, target)
    assert tight.inference.startswith("full") and "exceeds the" in tight.inference
    assert roomy.inference.startswith("incremental")
    assert torch.allclose(small, large, atol=1e-4)
