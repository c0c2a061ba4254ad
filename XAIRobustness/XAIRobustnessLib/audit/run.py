"""Run an audit on Dask distributed: a ``LocalCluster`` of worker processes by default, or an existing
cluster by its scheduler address (e.g. one dask-jobqueue started on Slurm).

Cases are submitted as paths; each worker loads the model once and reads its cases itself. Rows come back as
cases finish and are appended to the results file at once (:class:`ResultStore`), so a stopped or crashed
audit resumes where it stopped. A worker that dies mid-case (killed, out of memory) loses nothing finished:
Dask runs that case again on another worker, and if the case keeps killing workers it is recorded as an
error instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.progress import CancelToken, ProgressCallback

from .case_audit import AuditSettings, audit_case
from .cohort import AuditCase
from .store import RESULTS_FILE, ResultStore

__all__ = ["AuditSettings", "run_audit", "AUDIT_FILE"]

AUDIT_FILE = "audit.json"
#: Each case is tried on this many workers before it is recorded as one that kills its worker.
ALLOWED_WORKER_DEATHS = 2


def run_audit(
    cases: Sequence[AuditCase],
    settings: AuditSettings,
    out: str | os.PathLike,
    workers: int = 2,
    scheduler: Optional[str] = None,
    worker_memory_gb: float = 4.0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    on_dashboard: Optional[Callable[[str], None]] = None,
) -> list[dict]:
    """Audit ``cases`` into ``out`` (new, or an earlier audit with the same settings, which is resumed).

    Returns every row of the audit (earlier runs' included), in the order cases finished.
    """
    out = _prepare(Path(out), settings, cases)
    store = ResultStore(out)
    done = store.done()
    todo = [(index, case) for index, case in enumerate(cases) if case.name not in done]
    if progress is not None:
        progress(len(done) / len(cases), f"{len(done)} of {len(cases)} cases already audited")
    if todo:
        with _client(workers, scheduler, worker_memory_gb) as client:
            if on_dashboard is not None and client.dashboard_link:
                on_dashboard(client.dashboard_link)
            _stream(client, todo, settings, store, len(cases), len(done), progress, cancel)
    return store.rows()


def _stream(client, todo, settings, store: ResultStore, total: int, finished: int, progress, cancel) -> None:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = {client.submit(audit_case, case, settings, index < settings.sanity_cases, pure=False,
                             key=f"audit-case-{index}"): case for index, case in todo}
    try:
        for future in as_completed(futures):
            if cancel is not None and cancel.cancelled:
                break
            case = futures[future]
            try:
                row = future.result()
            except KilledWorker:
                row = {**case.row(), "status": "error", "error": f"the case ended {ALLOWED_WORKER_DEATHS} workers "
                                                                 "(out of memory or crashed); it was not measured"}
            store.append(row)
            finished += 1
            if progress is not None:
                progress(finished / total, f"{finished} of {total} cases: {case.name} {row['status']}")
    finally:
        client.cancel(list(futures))
    if cancel is not None:
        cancel.check()


@contextlib.contextmanager
def _client(workers: int, scheduler: Optional[str], worker_memory_gb: float) -> Iterator:
    from dask import config
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    if workers < 1:
        raise XAIInputError("--workers must be at least 1.")
    # One thread per worker process: torch and the explanations are the parallel work, and one case at a
    # time keeps each worker inside its memory limit (the nanny restarts a worker that exceeds it).
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, and glibc then stops adapting its mmap threshold:
    # every large array is a fresh mmap with its pages faulted in, which made a full case 1.5x slower
    # (85 s instead of 55 s, the extra all system time). Cases here release their memory at the end anyway.
    with config.set({"distributed.scheduler.allowed-failures": ALLOWED_WORKER_DEATHS - 1,
                     "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=f"{worker_memory_gb}GB",
                      dashboard_address="127.0.0.1:0", scheduler_port=0, host="127.0.0.1",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _prepare(out: Path, settings: AuditSettings, cases: Sequence[AuditCase]) -> Path:
    """``out`` made ready: new or empty (then described), or an earlier audit with the same settings."""
    if not cases:
        raise XAIInputError("The cohort has no cases.")
    out = out.absolute()
    described = {"settings": settings.to_dict(), "cases": len(cases)}
    record = out / AUDIT_FILE
    if out.exists() and not out.is_dir():
        raise XAIInputError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise XAIInputError(f"--out {out} holds files that are not a slicer-xai audit; choose a new or empty "
                                "folder.") from None
        if earlier.get("settings") != described["settings"]:
            raise XAIInputError(f"--out {out} holds an audit with other settings; resume it with the same ones "
                                "or choose a new folder.")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
        (out / RESULTS_FILE).touch()
    except OSError as error:
        raise XAIInputError(f"Cannot write to {out} ({error.strerror}); choose another --out.") from None
    return out
