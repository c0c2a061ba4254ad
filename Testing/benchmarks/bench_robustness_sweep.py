"""Benchmark (not a test; pytest does not collect ``bench_*.py``): the default robustness sweep —
the model modality's 8 perturbations × severities 1..5, Grad-CAM — on a demo model and sample case.

    python Testing/benchmarks/bench_robustness_sweep.py [--model brain-lesion-classifier]
        [--case XAIExplain/XAIExplainLib/Resources/SampleData/brain-lesion-case1.nii.gz] [--threads 2] [--repeat 1]

Prints the wall time of the sweep (model already loaded, as in the Slicer module) and its breakdown;
the target is under 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources"
sys.path[:0] = [str(ROOT / "XAIExplain"), str(ROOT / "XAIRobustness")]

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from XAIExplainLib.models import load_model  # noqa: E402
from XAIRobustnessLib.sweep import robustness_sweep  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-lesion-classifier")
    parser.add_argument("--case", default=str(RESOURCES / "SampleData" / "brain-lesion-case1.nii.gz"))
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = sitk.ReadImage(args.case)
    model = load_model(args.model)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times = []
    for _ in range(args.repeat):
        clock = time.perf_counter()
        sweep = robustness_sweep(image, model, method=args.method)
        times.append(time.perf_counter() - clock)
    cases = sum(len(s.severities) - 1 for s in sweep.sweeps.values())
    breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in sweep.timings_s.items() if k != "total")
    print(f"default sweep: {len(sweep.sweeps)} perturbations x {cases // len(sweep.sweeps)} severities = {cases} "
          f"perturbed cases, {args.method}, {model.model_id} on {Path(args.case).name} {image.GetSize()}")
    print(f"wall time: best {min(times):.1f} s of {len(times)} ({breakdown}); batch {sweep.settings['batch_size']}, "
          f"{args.threads} threads, 1-min load average at start {load:.1f}")
    print("target: < 30 s on 2 CPU cores:", "met" if min(times) < 30 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
