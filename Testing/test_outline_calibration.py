"""Where a trained network draws its line, folded into the output bias: the segmenter's outline threshold chosen
on training cases, a classifier's case threshold on validation cases; the bundle stays a plain network."""

from __future__ import annotations

import monai
import numpy as np
import pytest
import torch
from torch import nn

from XAIExplainLib.training.calibration import choose_operating_offset, choose_outline_offset, shift_lesion_log_odds
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


class _PeakLogOdds(nn.Module):
    """Lesion log-odds = image: a case's max-pooled score is its brightest voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def _cases_with_peaks(peaks: list[float], label: int) -> list[np.ndarray]:
    images = []
    for peak in peaks:
        image = np.full((8, 8, 8), -9.0, np.float32)
        image[4, 4, 4] = peak
        images.append(image)
    return images


def test_the_operating_point_gains_the_faint_lesions_a_lesion_free_case_allows_and_no_more():
    # Lesions the cautious network scores at -0.5 and -2.5 (missed at 0.5), one it finds; the lesion-free
    # cases' worst voxels at -1.6 and lower: raising by 1.5 finds one more lesion and no false positive,
    # 2.0 would call one lesion-free case in 20 positive (5 %), 2.5 three of them.
    free = [-1.6, -2.2, -2.4] + [-6.0] * 17
    data = ModelGridSet(images=_cases_with_peaks([-0.5, -2.5, 3.0], 1) + _cases_with_peaks(free, 0),
                        labels=np.array([1] * 3 + [0] * 20), masks=None, infos=[{}] * 23)
    strict = choose_operating_offset(_PeakLogOdds(), data, max_false_positive_rate=0.0, offsets=(0.0, 1.0, 1.5, 2.0, 2.5))
    assert strict.offset == 1.5
    assert strict.sensitivity[0.0] == pytest.approx(1 / 3) and strict.sensitivity[1.5] == pytest.approx(2 / 3)
    five_percent = choose_operating_offset(_PeakLogOdds(), data, 0.05, offsets=(0.0, 1.0, 1.5, 2.0, 2.5))
    assert five_percent.offset == 2.0 and five_percent.false_positive_rate[2.0] == pytest.approx(0.05)
    assert five_percent.false_positive_rate[2.5] == pytest.approx(0.15)


def test_an_over_eager_classifier_has_its_threshold_raised_and_one_past_saving_is_refused():
    eager = ModelGridSet(images=_cases_with_peaks([4.0], 1) + _cases_with_peaks([0.5], 0), labels=np.array([1, 0]),
                         masks=None, infos=[{}, {}])
    chosen = choose_operating_offset(_PeakLogOdds(), eager)
    assert chosen.offset == -0.5 and chosen.false_positive_rate[0.0] == 1.0 and chosen.sensitivity[-0.5] == 1.0
    hopeless = ModelGridSet(images=_cases_with_peaks([9.0], 1) + _cases_with_peaks([8.0], 0), labels=np.array([1, 0]),
                            masks=None, infos=[{}, {}])
    with pytest.raises(ValueError, match="lesion-free validation cases positive"):
        choose_operating_offset(_PeakLogOdds(), hopeless)
    lesion_only = ModelGridSet(images=_cases_with_peaks([1.0], 1), labels=np.array([1]), masks=None, infos=[{}])
    with pytest.raises(ValueError, match="with and without a lesion"):
        choose_operating_offset(_PeakLogOdds(), lesion_only)
