"""Benchmark (not a test): explanations of real-size segmentation networks on a CT-size grid, window by window,
against Captum and MONAI run on the same sliding-window model, in the same run.

    python Testing/benchmarks/bench_windowed.py [--grid 512,512,120] [--networks unet,segresnet,swinunetr]
        [--methods gradcam,gradient,smoothgrad,ig,occlusion] [--cap-gb 8] [--threads 2]

Networks, random but seeded weights, sized as the MONAI Model Zoo bundles: ``unet`` (spleen_ct_segmentation:
UNet 16-256, 2 residual units, batch norm, 2 classes), ``segresnet`` (wholeBody_ct_segmentation: SegResNet,
32 filters, blocks [1,2,2,4], 105 classes), ``swinunetr`` (swin_unetr_btcv_segmentation: feature size 48, 14
classes). Each is run in 96^3 windows with overlap 0.25 and Gaussian blending, on a seeded CT-like volume
scaled to 0..1; the target is class 1's logits summed over a 24x24x20 box (a lesion) that meets 2 of the
grid's windows (98 on 512x512x120).

Rows: ours (:func:`XAIExplainLib.explainers.windowed.attribute_by_windows`, with the engine's 2 GB budget)
and the reference — Captum's Saliency, NoiseTunnel(Saliency), IntegratedGradients and Occlusion with MONAI's
``sliding_window_inference`` as the forward function (the model the bundle's inferer runs), MONAI's
``GradCAM`` on the whole grid (padded to a multiple of 32) — each in a child process that is stopped when its
resident memory passes ``--cap-gb`` or its time passes ``--timeout-s``. Peak memory is the largest resident
set size above the row's start, sampled every 5 ms. Method parameters are kept small so the run fits a few
CPU cores (4 IG steps, 4 SmoothGrad samples, 32-voxel occlusion windows): memory does not depend on them,
time grows linearly with them.

``--check``: before the big grid, ours and Captum's maps of the UNet on a 160x160x96 grid (where the reference
fits) are compared: max |difference| / range of the reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XAIExplain"), str(Path(__file__).parent)]

import torch  # noqa: E402

from bench_explainers import PAGE, Run, max_diff, measure_once  # noqa: E402
from XAIExplainLib.explainers import make_explainer  # noqa: E402
from XAIExplainLib.explainers.windowed import SlidingWindows, attribute_by_windows  # noqa: E402
from XAIExplainLib.models.layers import suggest_cam_layers  # noqa: E402
from XAIExplainLib.models.loading import prepare_for_explaining  # noqa: E402
from XAIExplainLib.targets import region_logit_sum  # noqa: E402

PATCH, OVERLAP = (96, 96, 96), 0.25
IG_STEPS, SMOOTHGRAD_SAMPLES, OCCLUSION_WINDOW = 4, 4, 32


def build_network(name: str) -> torch.nn.Module:
    from monai.networks.nets import SegResNet, SwinUNETR, UNet

    torch.manual_seed(0)
    if name == "unet":
        network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                       strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    elif name == "segresnet":
        network = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32,
                            blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    elif name == "swinunetr":
        network = SwinUNETR(in_channels=1, out_channels=14, feature_size=48, spatial_dims=3)
    else:
        raise SystemExit(f"unknown network {name}")
    prepare_for_explaining(network)
    return network


def ct_like(grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded smooth volume in 0..1 with a bright blob, and the 24x24x20 target box around the blob."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 1, *(max(g // 16, 2) for g in grid), generator=generator)
    inputs = torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear", align_corners=False) * 0.6
    centre = (min(grid[0] - 13, 42), min(grid[1] - 13, 42), min(grid[2] - 11, 50))
    box = tuple(slice(c - h, c + h) for c, h in zip(centre, (12, 12, 10)))
    inputs[(0, 0, *box)] += 0.3
    region = torch.zeros(grid, dtype=torch.bool)
    region[box] = True
    return inputs.clamp(0, 1), region


def explainer_for(method: str, network: torch.nn.Module, layer: Optional[str]):
    params: dict[str, Any] = {"ig": {"n_steps": IG_STEPS}, "smoothgrad": {"n_samples": SMOOTHGRAD_SAMPLES},
                              "occlusion": {"window": OCCLUSION_WINDOW}}.get(method, {})
    return make_explainer(method, network, layer, **params)


def ours(method: str, network: torch.nn.Module, layer: Optional[str], inputs: torch.Tensor,
         region: torch.Tensor) -> tuple[torch.Tensor, dict]:
    windows = SlidingWindows.plan(inputs.shape[2:], PATCH, OVERLAP)
    return attribute_by_windows(explainer_for(method, network, layer), inputs, 1, region, windows)


def reference(method: str, network: torch.nn.Module, layer: Optional[str], inputs: torch.Tensor,
              region: torch.Tensor) -> torch.Tensor:
    """Captum's method on MONAI's sliding-window model (MONAI's GradCAM on the padded whole grid)."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
    from monai.inferers import sliding_window_inference

    score = region_logit_sum(1, region)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return score(sliding_window_inference(x, roi_size=PATCH, sw_batch_size=1, predictor=network,
                                              overlap=OVERLAP, mode="gaussian"))

    if method == "gradient":
        return Saliency(forward).attribute(inputs, abs=True)
    if method == "smoothgrad":
        sigma = 0.15 * float(inputs.max() - inputs.min())
        return NoiseTunnel(Saliency(forward)).attribute(inputs, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES,
                                                        nt_samples_batch_size=1, stdevs=sigma, abs=False).abs()
    if method == "ig":
        return IntegratedGradients(forward).attribute(inputs, baselines=float(inputs.min()), n_steps=IG_STEPS,
                                                      internal_batch_size=1)
    if method == "occlusion":
        window = (1, OCCLUSION_WINDOW, OCCLUSION_WINDOW, OCCLUSION_WINDOW)
        return Occlusion(forward).attribute(inputs, sliding_window_shapes=window, strides=window,
                                            perturbations_per_eval=1)
    if method == "gradcam":
        from monai.visualize import GradCAM

        padded = [(-s) % 32 for s in inputs.shape[2:]]
        grid = torch.nn.functional.pad(inputs, [p for s in reversed(padded) for p in (0, s)])
        for parameter in network.parameters():  # MONAI's GradCAM hooks the layer's backward: weights need grads
            parameter.requires_grad_(True)
        return GradCAM(network, target_layers=layer)(grid, class_idx=1)
    raise SystemExit(f"unknown method {method}")


def capped(network: str, method: str, grid: str, cap_gb: float, timeout_s: float) -> tuple[Optional[Run], str]:
    """The reference row in a child process (this script with ``--reference``), stopped when its resident memory
    passes ``cap_gb`` or its time ``timeout_s``: (its wall time and peak above its start, or None; what happened)."""
    import json
    import subprocess

    child = subprocess.Popen([sys.executable, __file__, "--reference", network, method, "--grid", grid,
                              "--threads", str(torch.get_num_threads())], stdout=subprocess.PIPE, text=True)
    clock, peak = time.perf_counter(), 0.0
    while child.poll() is None:
        time.sleep(0.05)
        peak = max(peak, _rss(child.pid))
        elapsed = time.perf_counter() - clock
        if peak > cap_gb * 2**30:
            child.kill()
            child.wait()
            return None, f"stopped above {cap_gb:g} GB after {elapsed:.0f} s"
        if elapsed > timeout_s:
            child.kill()
            child.wait()
            return None, f"stopped after {timeout_s:.0f} s ({peak / 2**30:.1f} GB so far)"
    if child.returncode != 0:
        return None, f"failed (exit code {child.returncode})"
    measured = json.loads(child.stdout.read().strip().splitlines()[-1])
    return Run(measured["seconds"], measured["peak_mib"], None), "done"


def reference_row(network_name: str, method: str, grid: tuple[int, ...]) -> None:
    """The child's side of :func:`capped`: one reference run, its time and peak printed as JSON."""
    import json

    network = build_network(network_name)
    layer = (suggest_cam_layers(network, "segmentation", 1, PATCH) or [None])[0]
    inputs, region = ct_like(grid)
    run = measure_once(lambda: reference(method, network, layer, inputs, region))
    print(json.dumps({"seconds": run.seconds, "peak_mib": run.peak_mib}))


def _rss(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def check_agreement(methods: list[str]) -> None:
    network = build_network("unet")
    inputs, region = ct_like((160, 160, 96))
    for method in (m for m in methods if m in ("gradient", "ig")):
        mine, _ = ours(method, network, None, inputs, region)
        theirs = reference(method, network, None, inputs, region)
        print(f"check UNet 160x160x96 {method}: max |ours - Captum| / range {max_diff(mine, theirs):.1e}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="512,512,120")
    parser.add_argument("--networks", default="unet,segresnet,swinunetr")
    parser.add_argument("--methods", default="gradcam,gradient,smoothgrad,ig,occlusion")
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference", nargs=2, metavar=("NETWORK", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = tuple(int(v) for v in args.grid.split(","))
    if args.reference:
        reference_row(*args.reference, grid)
        return 0
    methods = args.methods.split(",")
    print(f"torch {torch.__version__}, {args.threads} threads, grid {'x'.join(map(str, grid))}, windows {PATCH} "
          f"overlap {OVERLAP}, reference capped at {args.cap_gb:g} GB / {args.timeout_s:.0f} s", flush=True)
    if args.check:
        check_agreement(methods)
    inputs, region = ct_like(grid)
    rows = []
    for name in args.networks.split(","):
        network = build_network(name)
        layer = (suggest_cam_layers(network, "segmentation", 1, PATCH) or [None])[0]
        for method in methods:
            run = measure_once(lambda: ours(method, network, layer, inputs, region))
            _, info = run.value
            mine = f"{run.seconds:.1f} s, {run.peak_mib / 1024:.2f} GB, {info['windows_run']}/{info['windows_in_grid']} windows"
            if args.no_reference:
                theirs, ratio = "", ""
            else:
                other, what = capped(name, method, args.grid, args.cap_gb, args.timeout_s)
                theirs = f"{other.seconds:.1f} s, {other.peak_mib / 1024:.2f} GB" if other else what
                ratio = (f"{other.seconds / run.seconds:.1f}x time, {other.peak_mib / max(run.peak_mib, 1):.1f}x memory"
                         if other else f"> {args.cap_gb * 1024 / max(run.peak_mib, 1):.1f}x memory" if "GB after" in what
                         else "")
            rows.append((name, method, mine, theirs, ratio))
            print(" | ".join(rows[-1]), flush=True)
    print("\n| network | method | ours (time, peak, windows run) | reference | reference / ours |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
