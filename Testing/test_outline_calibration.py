"""The segmenter's outline threshold, chosen on training cases and folded into the output bias: the
bundle stays a plain network whose arg-max is the calibrated outline."""

from __future__ import annotations

import monai
import numpy as np
import pytest
import torch
from torch import nn

from XAIExplainLib.training.calibration import choose_outline_offset, shift_lesion_log_odds
from XAIExplainLib.training.datasets import ModelGridSet
from XAIExplainLib.training.recipes import unet_def


def _log_odds(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    return out[:, 1] - out[:, 0]


@torch.no_grad()
def test_the_offset_moves_every_voxels_lesion_log_odds_of_the_demo_unet():
    definition = {k: v for k, v in unet_def(8, 0.1).items() if k != "_target_"}
    network = monai.networks.nets.UNet(**definition).eval()
    x = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(1))
    before = _log_odds(network, x)
    shift_lesion_log_odds(network, 2.5)
    torch.testing.assert_close(_log_odds(network, x), before + 2.5, atol=1e-4, rtol=0)
    assert not network.training


class _ScaledOutput(nn.Module):
    """A network whose last convolution is followed by a scaling: its bias is not the output's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * self.conv(x)


def test_a_network_whose_output_is_not_its_last_convolution_is_refused_and_left_as_it_was():
    network = _ScaledOutput()
    bias = network.conv.bias.detach().clone()
    with pytest.raises(ValueError, match="not the network's output"):
        shift_lesion_log_odds(network, 1.0)
    torch.testing.assert_close(network.conv.bias.detach(), bias)


class _FixedLogOdds(nn.Module):
    """Lesion log-odds = image - 2: a cautious segmenter whose outline misses the lesion's dim rim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - 2.0], dim=1)


def test_the_chosen_offset_recovers_the_rim_but_stops_before_a_false_positive_on_a_lesion_free_case():
    lesion = np.zeros((16, 16, 16), np.float32)
    lesion[6:10, 6:10, 6:10] = 1.5  # rim: outlined once the log-odds are raised by more than 0.5
    lesion[7:9, 7:9, 7:9] = 3.0  # core: outlined as trained
    free = np.zeros((16, 16, 16), np.float32)
    free[2, 2, 2] = 0.8  # a bright spot that an offset above 1.2 would call a lesion
    data = ModelGridSet(images=[lesion, free], labels=np.array([1, 0]), masks=[lesion > 0, free > 5], infos=[{}, {}])
    chosen = choose_outline_offset(_FixedLogOdds(), data, offsets=(0.0, 1.0, 2.0))
    assert chosen.mean_dice[0.0] < 0.3  # the core alone
    assert chosen.mean_dice[1.0] == chosen.mean_dice[2.0] == 1.0
    assert chosen.false_positive_cases == {0.0: 0, 1.0: 0, 2.0: 1}
    assert chosen.offset == 1.0
