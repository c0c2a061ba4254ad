"""Benchmark (not a test): ``slicer-xai audit`` throughput on Dask with 1 and 2 local workers, and its per-case
overhead against running one ``slicer-xai explain`` per case, in the same run on the same cohort.

    python Testing/benchmarks/bench_audit.py [--cases 24] [--seed 11]

The cohort is generated (``slicer-xai data synth --kind brain-mri``); every case gets the same work in both
arms: the demo classifier's recommended explanation (Grad-CAM) with 8 TTA samples, no stability sweep,
faithfulness or randomisation check (``explain`` does none of those). Printed: cases per minute with 1 and 2
workers and their ratio (target ≥ 1.8), end to end (process and cluster start, report included) and
inside the cluster (from the busiest worker's summed case times: what thousands of cases would see), seconds per case of the audit with 1 worker and of one ``explain``
process per case (model loaded and Python started each time), the overhead of the audit per case in % of the
latter (target < 10 %; negative means the audit is faster), and the peak resident memory of each worker.
Each audit worker computes with one thread, so the ``explain`` arm runs with ``OMP_NUM_THREADS=1`` and
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``: the same one core, so that the difference is the audit's own cost (cluster, scheduling, results file, thumbnails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "brain-lesion-classifier"


def _cli(*args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "XAIExplain"), str(ROOT / "XAIRobustness")]),
                   **({"OMP_NUM_THREADS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
                      if threads else {})}
    return subprocess.run([sys.executable, "-m", "XAICommandLine", *args], capture_output=True, text=True,
                          env=environment, check=True)


def _audit(cohort: Path, out: Path, workers: int) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    _cli("audit", "--model", MODEL, "--cases", str(cohort), "--out", str(out), "--workers", str(workers),
         "--method", "gradcam", "--uncertainty", "tta", "--samples", "8", "--no-stability", "--no-faithfulness",
         "--sanity-cases", "0")
    elapsed = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines() if line.strip()]
    return elapsed, rows


def _busiest_worker_s(rows: list[dict]) -> float:
    """Seconds the busiest worker spent on its cases: the audit's length once the cluster is up."""
    busy: dict = {}
    for row in rows:
        busy[row["worker_pid"]] = busy.get(row["worker_pid"], 0.0) + row["runtime_s"]
    return max(busy.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        cohort = work / "cohort"
        _cli("data", "synth", "--kind", "brain-mri", "--n", str(args.cases), "--seed", str(args.seed),
             "--out", str(cohort))
        images = sorted(p for p in cohort.glob("*.nii.gz") if not p.name.endswith("_mask.nii.gz"))
        started = time.perf_counter()
        for index, image in enumerate(images):
            _cli("explain", str(image), "--model", MODEL, "--method", "gradcam", "--uncertainty", "tta",
                 "--samples", "8", "--out", str(work / f"explain-{index}"), threads=1)
        per_explain = (time.perf_counter() - started) / len(images)
        one, rows_one = _audit(cohort, work / "audit-1", 1)
        two, rows_two = _audit(cohort, work / "audit-2", 2)
        assert all(r["status"] == "ok" for r in rows_one + rows_two), "a case failed"
        n = len(images)
        print(f"cohort: {n} brain-mri cases, Grad-CAM + 8 TTA samples each, on {os.cpu_count()} CPU cores")
        print(f"audit, 1 worker : {n / one * 60:6.2f} cases/min ({one / n:.2f} s per case, cluster start included)")
        print(f"audit, 2 workers: {n / two * 60:6.2f} cases/min ({two / n:.2f} s per case)")
        print(f"speed-up 1 -> 2 workers: {one / two:.2f}x end to end (target >= 1.8)")
        busy_one, busy_two = _busiest_worker_s(rows_one), _busiest_worker_s(rows_two)
        print(f"speed-up 1 -> 2 workers inside the cluster: {busy_one / busy_two:.2f}x "
              f"({n / busy_one * 60:.2f} -> {n / busy_two * 60:.2f} cases/min, start-up excluded)")
        print(f"one `slicer-xai explain` per case, on one core as one worker has: {per_explain:.2f} s per case")
        print(f"audit overhead per case against it: {100 * (one / n - per_explain) / per_explain:+.1f} % (target < 10 %)")
        for label, rows in (("1 worker", rows_one), ("2 workers", rows_two)):
            peaks = {}
            for row in rows:
                peaks[row["worker_pid"]] = max(peaks.get(row["worker_pid"], 0), row["worker_peak_rss_mb"])
            print(f"peak memory per worker ({label}): " + ", ".join(f"{v:.0f} MB" for v in peaks.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
