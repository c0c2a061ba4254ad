"""Benchmark (not a test; pytest does not collect ``bench_*.py``): our explainers against Captum and MONAI,
on the same model, input and parameters, in the same run.

    python Testing/benchmarks/bench_explainers.py [--quick] [--threads 2] [--repeat 1] [--models resnet,demo,unet,large]

Models: a MONAI ``ResNet`` (basic blocks, layers [1,1,1,1], widths 16-128, 0.9 M parameters, random but
seeded weights) on a seeded random 1x1x96^3 input (64^3 with ``--quick``); the demo model
``brain-lesion-classifier`` on its sample case; a MONAI ``UNet`` (channels 16-128, strides 2, one
residual unit, batch normalisation: the demo models' architecture) whose target is the class-1 logits
summed over a fixed central box.

Each row gives the wall time of ours and of the reference (the median of ``--repeat`` runs, taken in
turn; at least 9 for rows under a second), their ratio (reference / ours: above 1 means ours is faster),
how far the maps agree (max |difference| / range of the reference map, or Spearman's rho where the
methods differ by design) and the
peak memory of each: the largest resident set size above the row's start, sampled every 5 ms from
/proc/self/statm, so PyTorch's CPU allocations count. Spearman's rho of an approximate occlusion map
against the exact one is given over all voxels and over the voxels where either map exceeds 1 % of its
range (the rest is floating-point noise around zero, whose order means nothing).

``demo`` also times the demo case's default occlusion as ``slicer-xai explain`` runs it (the checked
approximate mode) against its exact mode.

``large``: the chest sample case resampled to a CT-sized 512x512x300 grid and explained as the command
line does (Grad-CAM plus 8 MC-dropout samples with the chest demo model), with its peak memory.
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
RESOURCES = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources"
sys.path[:0] = [str(ROOT / "XAIExplain")]

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from XAIExplainLib.explainers import GradCAM, IntegratedGradients, Occlusion, SmoothGrad  # noqa: E402
from XAIExplainLib.explainers.budget import batch_size_for  # noqa: E402
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


REPEAT = 1
#: Runs shorter than this are repeated at least ``SHORT_REPEAT`` times: a 0.2 s pass varies by 10 % from run to run.
SHORT_SECONDS, SHORT_REPEAT = 1.0, 9


def repeats(first: Run) -> int:
    """How many runs a measurement takes, given its first one."""
    return max(REPEAT, SHORT_REPEAT) if first.seconds < SHORT_SECONDS else REPEAT


def measure(fn: Callable[[], Any]) -> Run:
    """The median wall time and largest peak memory of ``REPEAT`` runs of ``fn()`` (more if it is short)."""
    runs = [measure_once(fn)]
    runs += [measure_once(fn) for _ in range(repeats(runs[0]) - 1)]
    seconds = sorted(run.seconds for run in runs)[len(runs) // 2]
    return Run(seconds, max(run.peak_mib for run in runs), runs[-1].value)


def measure_pair(ours: Callable[[], Any], reference: Callable[[], Any]) -> tuple[Run, Run]:
    """Ours and the reference, run in turn ``REPEAT`` times (more if ours is short) so that load changes hit both alike."""
    runs = [(measure_once(ours), measure_once(reference))]
    runs += [(measure_once(ours), measure_once(reference)) for _ in range(repeats(runs[0][0]) - 1)]

    def median(side: list[Run]) -> Run:
        return Run(sorted(r.seconds for r in side)[len(side) // 2], max(r.peak_mib for r in side), side[-1].value)

    return median([a for a, _ in runs]), median([b for _, b in runs])


def measure_once(fn: Callable[[], Any]) -> Run:
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


def spearman_where_it_matters(approximate: torch.Tensor, exact: torch.Tensor, share: float = 0.01) -> str:
    """Spearman over all voxels, and over those where either map exceeds ``share`` of its range."""
    a, e = approximate.flatten(), exact.flatten()
    keep = (a.abs() > share * float(a.max() - a.min())) | (e.abs() > share * float(e.max() - e.min()))
    part = f"{spearman(a[keep], e[keep]):.3f} on the {float(keep.float().mean()):.0%} above 1 % of the range" if keep.sum() > 2 else "n/a"
    return f"Spearman vs exact {spearman(a, e):.3f} (all), {part}"


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
    bundle = RESOURCES / "Models" / "brain-lesion-classifier"
    sample = RESOURCES / "SampleData" / "brain-lesion-case1.nii.gz"
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
    # The demo models' architecture: batch normalisation (local in eval mode, unlike instance normalisation).
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                   num_res_units=1, norm="batch").eval()
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

    layer = case.network.get_submodule(case.cam_layer)

    def forward_backward_to_layer() -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            scores = case.target(case.network(case.inputs))
            (gradient,) = torch.autograd.grad(scores.sum(), captured[-1])
        finally:
            handle.remove()
        return gradient

    floor = measure(forward_backward_to_layer)
    table.add(case.name, f"forward + backward to {case.cam_layer}", floor)
    ours, monai = measure_pair(lambda: GradCAM(case.network, case.cam_layer).attribute(case.inputs, case.target),
                               lambda: MonaiGradCAM(nn_module=case.network, target_layers=case.cam_layer)(case.inputs, class_idx=case.class_index))
    table.add(case.name, "Grad-CAM", ours, monai, "MONAI GradCAM",
              # MONAI's default normaliser maps a map's maximum to 0 and its minimum to 1: compare with 1 - map.
              f"Spearman {spearman(ours.value, 1 - monai.value):.3f} (MONAI's map inverted back); "
              f"{ours.seconds / floor.seconds:.2f}x the forward + backward to the layer")


def gradient_rows(table: Table, case: Case, steps: int, samples: int) -> None:
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import NoiseTunnel, Saliency

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return case.target(case.network(batch))

    baseline = torch.full_like(case.inputs, float(case.inputs.min()))
    batch = batch_size_for(case.network, case.inputs)
    ours, captum = measure_pair(
        lambda: IntegratedGradients(case.network, n_steps=steps).attribute(case.inputs, case.target),
        lambda: CaptumIG(forward).attribute(case.inputs, baselines=baseline, n_steps=steps, internal_batch_size=4))
    table.add(case.name, f"Integrated Gradients ({steps} steps; ours batch {batch} by the 2 GB budget, Captum 4)", ours,
              captum, "Captum IntegratedGradients", f"max diff {max_diff(ours.value, captum.value.detach()):.1e}")

    sigma = 0.15 * float(case.inputs.max() - case.inputs.min())
    ours, captum = measure_pair(
        lambda: SmoothGrad(case.network, n_samples=samples).attribute(case.inputs, case.target),
        lambda: NoiseTunnel(Saliency(forward)).attribute(case.inputs, nt_type="smoothgrad", nt_samples=samples,
                                                         nt_samples_batch_size=4, stdevs=sigma, abs=False))
    table.add(case.name, f"SmoothGrad ({samples} samples; ours batch {batch}, Captum 4)", ours, captum,
              "Captum NoiseTunnel(Saliency)", f"Spearman {spearman(ours.value, captum.value.detach().abs()):.3f} (different noise draws)")


def occlusion_rows(table: Table, case: Case, monai_too: bool) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return case.target(case.network(batch))

    fill = blurred_fill(case.inputs, WINDOW)
    exact = Occlusion(case.network, window=WINDOW, internal_batch_size=8, mode="exact")
    ours, captum = measure_pair(lambda: exact.attribute(case.inputs, case.target),
                                lambda: CaptumOcclusion(forward).attribute(
                                    case.inputs, sliding_window_shapes=(1, WINDOW, WINDOW, WINDOW), strides=WINDOW,
                                    baselines=fill, perturbations_per_eval=8))
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
    default = Occlusion(case.network, window=WINDOW, internal_batch_size=8, mode="approximate")
    threshold_only = Occlusion(case.network, window=WINDOW, internal_batch_size=8, mode="approximate", refine_threshold=None)
    for label, approximate in ((f"approximate (threshold {default.field_threshold} + drill-down {default.refine_threshold})", default),
                               (f"approximate, threshold {default.field_threshold} only", threshold_only)):
        fast = measure(lambda: approximate.attribute(case.inputs, case.target))
        what_ran = approximate.inference.split(", ", 1)[1] if ", " in approximate.inference else approximate.inference
        table.add(case.name, f"Occlusion {label}", fast, captum, "Captum Occlusion",
                  f"{spearman_where_it_matters(fast.value, ours.value)}; ran: {what_ran}")


def default_occlusion_rows(table: Table) -> None:
    """The demo case's occlusion as the command line runs it by default (8-voxel windows, the checked
    approximate mode), against the exact map of the same windows."""
    import SimpleITK as sitk

    from XAIExplainLib.models import load_model
    from XAIExplainLib.pipeline import explain_image

    model = load_model(RESOURCES / "Models" / "brain-lesion-classifier")
    image = sitk.ReadImage(str(RESOURCES / "SampleData" / "brain-lesion-case1.nii.gz"))

    def explained(mode: str) -> torch.Tensor:
        result = explain_image(image, model, method="occlusion", method_params={"mode": mode})
        return torch.from_numpy(sitk.GetArrayFromImage(result.saliency))

    default, exact = measure_once(lambda: explained("approximate")), measure_once(lambda: explained("exact"))
    table.add("demo case (explain)", "Occlusion, default (approximate, window 8)", default, exact,
              "ours, exact mode", f"Spearman vs exact {spearman(default.value, exact.value):.3f}")


def large_volume_rows(table: Table) -> None:
    """A CT-sized volume explained as the command line does: Grad-CAM plus MC-dropout uncertainty."""
    import SimpleITK as sitk

    from XAIExplainLib.models import load_model
    from XAIExplainLib.pipeline import explain_image

    sample = sitk.ReadImage(str(RESOURCES / "SampleData" / "chest-nodule-case1.nii.gz"))
    size = (512, 512, 300)
    grid = sitk.Image(size, sitk.sitkInt16)
    grid.SetSpacing([n * s / m for n, s, m in zip(sample.GetSize(), sample.GetSpacing(), size)])
    grid.SetOrigin(sample.GetOrigin())
    grid.SetDirection(sample.GetDirection())
    image = sitk.Resample(sample, grid, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16)
    model = load_model("chest-nodule-classifier")
    updates: list[float] = []
    run = measure_once(lambda: explain_image(image, model, method="gradcam", uncertainty="mc-dropout", samples=8,
                                             progress=lambda fraction, _message: updates.append(fraction)))
    grid_size = "x".join(str(n) for n in run.value.saliency.GetSize())
    table.add("CT 512x512x300", "Grad-CAM + MC dropout (8 samples), chest demo model", run,
              agreement=f"maps on the {grid_size} input grid; {len(updates)} progress updates; "
                        f"peak {run.peak_mib / 1024:.1f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 inputs and fewer rows (about 4 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    parser.add_argument("--models", default="resnet,demo,unet,large")
    args = parser.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    size = 64 if args.quick else 96
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, 1-min load average {load:.1f}, "
          f"{REPEAT} run(s) per measurement")
    table = Table()
    if "resnet" in models:
        case = resnet_case(size)
        forward_rows(table, case)
        gradcam_rows(table, case)
        if not args.quick:
            gradient_rows(table, case, steps=16, samples=16)
        occlusion_rows(table, case, monai_too=not args.quick)
    if "demo" in models and (case := demo_case()) is not None:
        default_occlusion_rows(table)
        forward_rows(table, case)
        gradcam_rows(table, case)
        occlusion_rows(table, case, monai_too=False)
    if "unet" in models and not args.quick:
        case = unet_case(size)
        forward_rows(table, case)
        occlusion_rows(table, case, monai_too=False)
    if "large" in models and not args.quick:
        large_volume_rows(table)
    print()
    print(table.markdown())
    print(f"\n1-min load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
