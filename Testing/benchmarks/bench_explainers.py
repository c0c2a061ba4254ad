"""Benchmark (not a test; pytest does not collect ``bench_*.py``): our explainers against Captum and MONAI,
on the same model, input and parameters, in the same run.

    python Testing/benchmarks/bench_explainers.py [--quick] [--threads 2] [--models resnet,demo,unet]

Models: a MONAI ``ResNet`` (basic blocks, layers [1,1,1,1], widths 16-128, 0.9 M parameters, random but
seeded weights) on a seeded random 1x1x96^3 input (64^3 with ``--quick``); the demo model
``brain-lesion-classifier`` on its sample case; a MONAI ``UNet`` (channels 16-128, strides 2, one
residual unit) whose target is the class-1 logits summed over a fixed central box.

Each row gives the wall time of ours and of the reference, their ratio (reference / ours: above 1 means
ours is faster), how far the maps agree (max |difference| / range of the reference map, or Spearman's
rho where the methods differ by design) and the peak memory of each: the largest resident set size
above the row's start, sampled every 5 ms from /proc/self/statm, so PyTorch's CPU allocations count.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XAIExplain")]

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from XAIExplainLib.explainers import GradCAM, IntegratedGradients, Occlusion, SmoothGrad  # noqa: E402
from XAIExplainLib.explainers.occlusion import blurred_fill  # noqa: E402
from XAIExplainLib.targets import TargetFn, class_logit, region_logit_sum  # noqa: E402

WINDOW = 16
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Case:
    name: str
    network: torch.nn.Module
    inputs: torch.Tensor
    target: TargetFn
    class_index: Optional[int]  # for classifiers (MONAI's Grad-CAM and occlusion take a class)
    cam_layer: Optional[str]


@dataclass
class Run:
    seconds: float
    peak_mib: float
    value: Any


def measure(fn: Callable[[], Any]) -> Run:
    """Wall time and peak resident memory above the start (MiB) of ``fn()``."""

    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE

    start = rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clock = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - clock
    done.set()
    sampler.join()
    return Run(seconds, (max(peak[0], rss()) - start) / 2**20, value)


def max_diff(ours: torch.Tensor, reference: torch.Tensor, region: tuple = ()) -> float:
    ours, reference = ours[(..., *region)], reference[(..., *region)]
    span = float(reference.max() - reference.min()) or 1.0
    return float((ours - reference).abs().max()) / span


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy())[0])


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, case: str, method: str, ours: Run, reference: Optional[Run] = None, versus: str = "",
            agreement: str = "") -> None:
        ratio = f"{reference.seconds / ours.seconds:.1f}x" if reference else ""
        self.rows.append((case, method, f"{ours.seconds:.2f}", f"{ours.peak_mib:.0f}", versus,
                          f"{reference.seconds:.2f}" if reference else "", f"{reference.peak_mib:.0f}" if reference else "",
                          ratio, agreement))
        print(" | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        header = ("model", "method", "ours s", "ours MiB", "reference", "ref s", "ref MiB", "speed-up", "agreement")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def resnet_case(size: int) -> Case:
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    network = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], spatial_dims=3,
                     n_input_channels=1, num_classes=2).eval()
    inputs = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    return Case(f"ResNet {size}^3", network, inputs, class_logit(1), 1, "layer4")


def demo_case() -> Optional[Case]:
    bundle = ROOT / "Resources" / "Models" / "brain-lesion-classifier"
    sample = ROOT / "Resources" / "SampleData" / "brain-lesion-case1.nii.gz"
    if not (bundle.is_dir() and sample.is_file()):
        return None
    import SimpleITK as sitk

    from XAIExplainLib.models import load_model
    from XAIExplainLib.pipeline import prepare_case

    model = load_model(bundle)
    case = prepare_case(sitk.ReadImage(str(sample)), model)
    shape = "x".join(str(s) for s in case.inputs.shape[2:])
    return Case(f"demo {shape}", model.network.eval(), case.inputs, class_logit(1), 1, model.spec.cam_target_layer)


def unet_case(size: int) -> Case:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                   num_res_units=1).eval()
    inputs = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    region = torch.zeros(size, size, size)
    region[size // 4: 3 * size // 4, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return Case(f"UNet {size}^3", network, inputs, region_logit_sum(1, region), None, None)


def forward_rows(table: Table, case: Case) -> None:
    with torch.no_grad():
        case.network(case.inputs)  # warm-up
        table.add(case.name, "forward", measure(lambda: case.network(case.inputs)))

    def forward_backward() -> torch.Tensor:
        inputs = case.inputs.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(case.target(case.network(inputs)).sum(), inputs)
        return gradient

    table.add(case.name, "forward + backward to input", measure(forward_backward))


def gradcam_rows(table: Table, case: Case) -> None:
    from monai.visualize import GradCAM as MonaiGradCAM

    ours = measure(lambda: GradCAM(case.network, case.cam_layer).attribute(case.inputs, case.target))
    monai = measure(lambda: MonaiGradCAM(nn_module=case.network, target_layers=case.cam_layer)(case.inputs, class_idx=case.class_index))
    table.add(case.name, "Grad-CAM", ours, monai, "MONAI GradCAM",
              # MONAI's default normaliser maps a map's maximum to 0 and its minimum to 1: compare with 1 - map.
              f"Spearman {spearman(ours.value, 1 - monai.value):.3f} (MONAI's map inverted back)")


def gradient_rows(table: Table, case: Case, steps: int, samples: int) -> None:
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import NoiseTunnel, Saliency

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return case.target(case.network(batch))

    baseline = torch.full_like(case.inputs, float(case.inputs.min()))
    ours = measure(lambda: IntegratedGradients(case.network, internal_batch_size=4, n_steps=steps).attribute(case.inputs, case.target))
    captum = measure(lambda: CaptumIG(forward).attribute(case.inputs, baselines=baseline, n_steps=steps, internal_batch_size=4))
    table.add(case.name, f"Integrated Gradients ({steps} steps, batch 4)", ours, captum, "Captum IntegratedGradients",
              f"max diff {max_diff(ours.value, captum.value.detach()):.1e}")

    sigma = 0.15 * float(case.inputs.max() - case.inputs.min())
    ours = measure(lambda: SmoothGrad(case.network, internal_batch_size=4, n_samples=samples).attribute(case.inputs, case.target))
    captum = measure(lambda: NoiseTunnel(Saliency(forward)).attribute(
        case.inputs, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=4, stdevs=sigma, abs=False))
    table.add(case.name, f"SmoothGrad ({samples} samples, batch 4)", ours, captum, "Captum NoiseTunnel(Saliency)",
              f"Spearman {spearman(ours.value, captum.value.detach().abs()):.3f} (different noise draws)")


def occlusion_rows(table: Table, case: Case, monai_too: bool) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return case.target(case.network(batch))

    fill = blurred_fill(case.inputs, WINDOW)
    exact = Occlusion(case.network, window=WINDOW, internal_batch_size=8)
    ours = measure(lambda: exact.attribute(case.inputs, case.target))
    captum = measure(lambda: CaptumOcclusion(forward).attribute(
        case.inputs, sliding_window_shapes=(1, WINDOW, WINDOW, WINDOW), strides=WINDOW, baselines=fill,
        perturbations_per_eval=8))
    # Where the size is not a multiple of the window our last window is moved in and Captum's is dropped:
    # compare the voxels both tilings cover with the same windows.
    region = tuple(slice(0, (s - WINDOW) // WINDOW * WINDOW if s % WINDOW else s) for s in case.inputs.shape[2:])
    table.add(case.name, f"Occlusion exact, {exact.inference}", ours, captum, "Captum Occlusion",
              f"max diff {max_diff(ours.value, captum.value, region):.1e}")
    if monai_too:
        from monai.visualize import OcclusionSensitivity

        monai = measure(lambda: OcclusionSensitivity(case.network, mask_size=WINDOW, n_batch=8, overlap=0.0, verbose=False)(case.inputs))
        monai_map = -monai.value[0][:, case.class_index: case.class_index + 1]
        table.add(case.name, "Occlusion exact", ours, monai, "MONAI OcclusionSensitivity",
                  f"Spearman {spearman(ours.value, monai_map):.3f} (MONAI: occluded score, own fill)")
    approximate = Occlusion(case.network, window=WINDOW, internal_batch_size=8, mode="approximate")
    fast = measure(lambda: approximate.attribute(case.inputs, case.target))
    table.add(case.name, "Occlusion approximate (coarse-to-fine)", fast, captum, "Captum Occlusion",
              f"Spearman vs exact {spearman(fast.value, ours.value):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 inputs and fewer rows (about 2 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="resnet,demo,unet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    size = 64 if args.quick else 96
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, 1-min load average {load:.1f}")
    table = Table()
    if "resnet" in models:
        case = resnet_case(size)
        forward_rows(table, case)
        gradcam_rows(table, case)
        if not args.quick:
            gradient_rows(table, case, steps=16, samples=16)
        occlusion_rows(table, case, monai_too=not args.quick)
    if "demo" in models and (case := demo_case()) is not None:
        forward_rows(table, case)
        gradcam_rows(table, case)
        occlusion_rows(table, case, monai_too=False)
    if "unet" in models and not args.quick:
        case = unet_case(size)
        forward_rows(table, case)
        occlusion_rows(table, case, monai_too=False)
    print()
    print(table.markdown())
    print(f"\n1-min load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
