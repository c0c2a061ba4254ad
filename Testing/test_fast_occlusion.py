"""Fast occlusion: incremental inference gives the full-inference map; fallback; approximate modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from XAIExplainLib.explainers import Occlusion
from XAIExplainLib.explainers.incremental import occluded_inference
from XAIExplainLib.targets import class_logit, region_logit_sum

SIZE = 32


def _image(size: int = SIZE) -> torch.Tensor:
    return torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (b.max() - b.min()))


def _both(network: torch.nn.Module, target, window: int = 8, stride: int = 8, image: torch.Tensor | None = None):
    image = _image() if image is None else image
    fast = Occlusion(network, window=window, stride=stride, mode="exact")
    slow = Occlusion(network, window=window, stride=stride, incremental=False, mode="exact")
    return fast, fast.attribute(image, target), slow.attribute(image, target)


@pytest.mark.parametrize("stride", [8, 5])
def test_incremental_equals_full_inference_on_a_resnet(stride):
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    network = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=3,
                     n_input_channels=1, num_classes=2).eval()
    fast, incremental, full = _both(network, class_logit(1), stride=stride)
    assert fast.inference == "incremental"
    assert _relative_difference(incremental, full) <= 1e-4


def test_incremental_equals_full_inference_on_a_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                   num_res_units=1).eval()
    region = torch.zeros(SIZE, SIZE, SIZE)
    region[8:24, 8:24, 8:24] = 1
    fast, incremental, full = _both(network, region_logit_sum(1, region))
    assert fast.inference == "incremental (focused on the explained region)"  # its first convolution; instance norm then runs on full tensors
    assert _relative_difference(incremental, full) <= 1e-4


def _batch_norm_unet(size: int = SIZE) -> torch.nn.Module:
    """The demo models' architecture (batch normalisation, skip connections, transposed convolutions), small."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                   num_res_units=1, norm="batch").eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):  # statistics as after training, not the identity
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return network


def _central_box(size: int = SIZE) -> torch.Tensor:
    region = torch.zeros(size, size, size)
    region[size // 4: 3 * size // 4, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return region


def test_skip_connections_and_transposed_convolutions_are_computed_on_patches(monkeypatch):
    from XAIExplainLib.explainers.incremental import IncrementalInference

    patched = {"_transposed": 0, "_concatenate": 0}
    for name in patched:
        original = getattr(IncrementalInference, name)

        def counting(self, node, env, _original=original, _name=name):
            result = _original(self, node, env)
            patched[_name] += result is not None
            return result

        monkeypatch.setattr(IncrementalInference, name, counting)
    fast, incremental, full = _both(_batch_norm_unet(), region_logit_sum(1, _central_box()))
    assert fast.inference.startswith("incremental (focused on the explained region)")
    assert patched["_transposed"] > 0 and patched["_concatenate"] > 0
    assert _relative_difference(incremental, full) <= 1e-4


def test_a_score_reading_a_small_region_is_recomputed_only_where_it_can_see_it_and_stays_exact(monkeypatch):
    """A lesion-sized, off-centre region: the decoder's patches shrink to what reaches it; the map is the same."""
    from XAIExplainLib.explainers import incremental

    convolved = []
    original = incremental._windowed_forward
    monkeypatch.setattr(incremental, "_windowed_forward",
                        lambda module, region, *args: convolved.append(region[0, 0].numel()) or original(module, region, *args))
    region = torch.zeros(SIZE, SIZE, SIZE)
    region[2:7, 20:27, 3:9] = 1
    network, target = _batch_norm_unet(), region_logit_sum(1, region)
    fast, focused, full = _both(network, target)
    # Windows beyond the region's receptive field are not computed at all: their drop is exactly 0.
    assert fast.inference == ("incremental (focused on the explained region), "
                              "37 of 64 windows out of the explained region's reach (drop 0)")
    assert _relative_difference(focused, full) <= 1e-4
    focused_work, convolved[:] = sum(convolved), []
    unfocused = Occlusion(network, window=8, stride=8, mode="exact").attribute(_image(), region_logit_sum(1, torch.ones(SIZE, SIZE, SIZE)))
    assert unfocused.abs().max() > 0 and sum(convolved) > 2 * focused_work


class _DownUp(torch.nn.Module):
    """A strided convolution, then a transposed convolution back up: the decoder step of a U-Net."""

    def __init__(self, kernel: int, padding: int, output_padding: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = torch.nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose3d(4, 2, kernel, stride=2, padding=padding, output_padding=output_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


@pytest.mark.parametrize("kernel, padding, output_padding", [(2, 0, 0), (3, 1, 1), (4, 1, 0)])
def test_transposed_convolutions_of_common_shapes_give_the_full_inference_map(kernel, padding, output_padding):
    network = _DownUp(kernel, padding, output_padding).eval()
    fast, incremental, full = _both(network, region_logit_sum(1, _central_box()), stride=5)
    assert fast.inference.startswith("incremental (focused on the explained region)")
    assert _relative_difference(incremental, full) <= 1e-4


def test_max_pooled_classifier_is_traced_and_gives_the_full_inference_map():
    from XAIExplainLib.models.pooling import MaxPooledClassifier

    network = MaxPooledClassifier(_batch_norm_unet(), positive_class=1).eval()
    image = _image()
    image[0, 0, 20:26, 6:12, 14:20] += 4.0  # one bright spot decides the case
    fast, incremental, full = _both(network, class_logit(1), image=image)
    assert fast.inference == "incremental"
    engine = occluded_inference(network, image)
    assert "head" in [node.target for node in engine.graph_module.graph.nodes]  # one node: scored from boxes
    assert _relative_difference(incremental, full) <= 1e-4


class _AbsoluteDarkness(torch.nn.Module):
    """Dense two-class logits with lesion evidence -|x| (from two 1x1x1 convolutions and a ReLU): the
    voxel nearest 0 decides; each voxel sees only itself, so most windows are far from the decider."""

    def __init__(self) -> None:
        super().__init__()
        self.split = torch.nn.Conv3d(1, 2, 1, bias=False)
        self.merge = torch.nn.Conv3d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.split.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1))
            self.merge.weight.copy_(torch.tensor([[0.0, 0.0], [-1.0, -1.0]]).reshape(2, 2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.relu(self.split(x)))


def _max_pooled(dense: torch.nn.Module) -> torch.nn.Module:
    from XAIExplainLib.models.pooling import MaxPooledClassifier

    return MaxPooledClassifier(dense, positive_class=1).eval()


def test_approximate_mode_leaves_windows_far_from_the_deciding_voxel_at_zero_when_a_sample_agrees():
    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))
    network = _max_pooled(dense)
    image = _image() * 0.1
    with torch.no_grad():  # make the spot decisive: channel 1 grows with brightness there
        dense[2].bias.copy_(torch.tensor([0.0, -1.0]))
    image[0, 0, 10:14, 20:24, 4:8] += 6.0
    exact = Occlusion(network, window=8, mode="exact").attribute(image, class_logit(1))
    approximate = Occlusion(network, window=8, mode="approximate", refine_threshold=None)
    fast = approximate.attribute(image, class_logit(1))
    assert "windows beyond the deciding voxel's reach left at 0 (8 checked)" in approximate.inference
    assert _relative_difference(fast, exact) <= 1e-4  # far windows really have no drop here


def test_approximate_mode_computes_far_windows_when_they_can_make_a_new_deciding_voxel():
    """A checkerboard of +-3 blurs to about 0, which this model finds more suspicious than anything in the
    image: occluding anywhere raises the score. The sample of far windows sees it; nothing is left out."""
    image = (torch.arange(SIZE)[:, None, None] + torch.arange(SIZE)[None, :, None] + torch.arange(SIZE)[None, None, :]) % 2
    image = (image.float() * 6.0 - 3.0)[None, None]
    image[0, 0, 4:6, 4:6, 4:6] = 0.5  # the deciding voxels of the unoccluded image
    network = _max_pooled(_AbsoluteDarkness())
    exact = Occlusion(network, window=8, mode="exact").attribute(image, class_logit(1))
    approximate = Occlusion(network, window=8, mode="approximate", refine_threshold=None)
    fast = approximate.attribute(image, class_logit(1))
    assert "every window beyond the deciding voxel's reach" in approximate.inference
    assert (exact < 0).float().mean() > 0.9  # the far windows matter...
    assert _relative_difference(fast, exact) <= 1e-4  # ...and are in the map


def test_projective_field_thresholding_keeps_the_ranking_of_the_exact_map():
    from scipy.stats import spearmanr

    # The score reads the whole output, so focusing on it cuts nothing and the threshold has work to do.
    network, target, image = _batch_norm_unet(48), region_logit_sum(1, torch.ones(48, 48, 48)), _image(48)
    exact = Occlusion(network, window=8, mode="exact").attribute(image, target)
    approximate = Occlusion(network, window=8, mode="approximate", field_threshold=0.5, refine_threshold=None)
    cut = approximate.attribute(image, target)
    assert approximate.parameters()["field_threshold"] == 0.5
    assert "projective field threshold 0.5 (largest error on 8 sample windows" in approximate.inference
    assert not torch.equal(cut, exact)  # the cut patches drop some far, small changes...
    assert spearmanr(cut.flatten(), exact.flatten())[0] >= 0.95  # ...and rank the windows as the exact map does
    uncut = Occlusion(network, window=8, mode="approximate", field_threshold=1.0, refine_threshold=None).attribute(image, target)
    assert _relative_difference(uncut, exact) <= 1e-6


def test_approximations_that_fail_their_sample_checks_give_the_exact_map():
    from monai.networks.nets import ResNet

    torch.manual_seed(0)  # global average pooling: every far change counts, so cutting patches breaks the map
    network = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=3,
                     n_input_channels=1, num_classes=2).eval()
    exact = Occlusion(network, window=8, mode="exact").attribute(_image(), class_logit(1))
    approximate = Occlusion(network, window=8, mode="approximate", field_threshold=0.35)
    assert _relative_difference(approximate.attribute(_image(), class_logit(1)), exact) <= 1e-5
    assert "exact: projective field threshold 0.35 moved a drop by" in approximate.inference
    # on a random image the evidence is everywhere: drill-down's check finds it outside the refined windows
    assert "every fine window (drill-down found evidence outside" in approximate.inference


def test_field_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="projective field threshold"):
        Occlusion(torch.nn.Identity(), mode="approximate", field_threshold=0.0)


class _Branching(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        if features.mean() > 0:
            features = features * 2
        return features.mean(dim=(2, 3, 4))


def test_networks_it_cannot_handle_fall_back_to_full_inference():
    torch.manual_seed(0)
    network = _Branching().eval()
    fast, incremental, full = _both(network, class_logit(1))
    assert fast.inference.startswith("full (the network cannot be traced")
    assert torch.allclose(incremental, full)

    scripted = torch.jit.script(network)
    fast, incremental, full = _both(scripted, class_logit(1))
    assert fast.inference == "full (TorchScript models cannot be traced)"
    assert torch.allclose(incremental, full)


class _BoxReader(torch.nn.Module):
    """A known answer: the 'lesion' logit is a weighted mean of smoothed intensity inside one box."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        torch.nn.init.constant_(self.smooth.weight, 1.0 / 27)
        weights = torch.zeros(1, 1, SIZE, SIZE, SIZE)
        weights[0, 0, 4:20, 8:24, 12:28] = torch.linspace(0.5, 1.5, 16)
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = (F.relu(self.smooth(x)) * self.weights).flatten(1).sum(dim=1) / self.weights.sum()
        return torch.stack([-lesion, lesion], dim=1)


def _approximate_and_exact() -> tuple[torch.Tensor, torch.Tensor]:
    network = _BoxReader().eval()
    image = _image().abs() + 1.0
    exact = Occlusion(network, window=4, mode="exact").attribute(image, class_logit(1))
    approximate = Occlusion(network, window=4, mode="approximate", refine_threshold=0.05)
    assert approximate.parameters()["mode"] == "approximate"
    return approximate.attribute(image, class_logit(1)), exact


def test_approximate_mode_finds_the_evidence_and_keeps_its_exact_values():
    fast, exact = _approximate_and_exact()
    peak = divmod(int(fast[0, 0].argmax()), SIZE * SIZE)[0]
    assert 4 <= peak < 20  # the peak lies in the box's slab along the first axis
    refined = (fast - exact).abs() < 1e-6
    strongest = exact >= exact.flatten().quantile(0.99)
    assert refined[strongest].float().mean() > 0.75  # most of the strongest evidence gets its exact value


class _SmallSpotReader(torch.nn.Module):
    """Scores one small spot only: windows spread over the image mostly change nothing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.ReLU())
        weights = torch.zeros(1, 4, SIZE, SIZE, SIZE)
        weights[0, :, 4:7, 24:27, 12:15] = 1.0  # off the diagonal the spread sample runs along
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spot = (self.features(x) * self.weights).flatten(1).sum(dim=1)
        return torch.stack([-spot, spot], dim=1)


def test_a_threshold_the_spread_windows_cannot_judge_is_judged_where_the_evidence_is():
    network, image = _SmallSpotReader().eval(), _image()
    exact = Occlusion(network, window=4, mode="exact").attribute(image, class_logit(1))
    approximate = Occlusion(network, window=4, mode="approximate")
    fast = approximate.attribute(image, class_logit(1))
    assert "sample windows showed no drop to check the projective field threshold on" in approximate.inference
    assert "largest error on 8 sample windows" in approximate.inference  # judged again on the spot's windows
    assert "drill-down:" in approximate.inference
    strongest = exact.abs() >= 0.5 * exact.abs().max()
    assert float((fast - exact)[strongest].abs().max()) <= 0.05 * float(exact.abs().max())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="occlusion mode"):
        Occlusion(torch.nn.Identity(), mode="fast")
