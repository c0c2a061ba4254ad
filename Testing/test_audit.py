"""`slicer-xai audit` on a real Dask LocalCluster of 2 worker processes: every case measured once, a bad case
recorded with its error, a restart resumes, and a worker killed mid-run loses nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
from conftest import ROOT, cube_mask, make_image
from test_cli import run_cli

from XAIViewer.audit_cases import parse_point

CENTRES = [(8, 9, 7), (15, 12, 11), None, (12, 8, 13), None]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five small cases (three with a lesion and its mask), labels.csv, and one unreadable case."""
    folder = tmp_path_factory.mktemp("cohort")
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label"])
        for index, centre in enumerate(CENTRES):
            image = make_image(size=(24, 22, 20), spacing=(2.0, 2.0, 2.0), blob_index=centre, seed=index)
            sitk.WriteImage(image, str(folder / f"case{index}.nii.gz"))
            mask_image = cube_mask(image, centre)
            sitk.WriteImage(mask_image, str(folder / f"case{index}_mask.nii.gz"))
            writer.writerow([f"case{index}", int(centre is not None)])
    nan = sitk.GetImageFromArray(np.full((20, 22, 24), np.nan, dtype=np.float32))
    sitk.WriteImage(nan, str(folder / "broken.nii.gz"))
    return folder


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines() if line.strip()]


def _audit(cohort, bundle, out, *extra):
    return ["audit", "--model", str(bundle), "--cases", str(cohort), "--out", str(out), "--workers", "2",
            "--uncertainty", "tta", "--samples", "2", "--sanity-cases", "2", *extra]


@pytest.fixture(scope="module")
def audited(cohort, classifier_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "out"
    run = run_cli(*_audit(cohort, classifier_bundle, out))
    return out, run


def test_every_case_is_measured_once_and_the_bad_one_keeps_its_error(audited):
    out, run = audited
    assert run.returncode == 0, run.stderr
    assert "Dask dashboard: http://127.0.0.1:" in run.stderr
    rows = {row["case"]: row for row in _rows(out)}
    assert sorted(rows) == ["broken", "case0", "case1", "case2", "case3", "case4"]
    assert rows["broken"]["status"] == "error" and "NaN" in rows["broken"]["error"]
    assert "\n" not in rows["broken"]["error"]
    for index, centre in enumerate(CENTRES):
        row = rows[f"case{index}"]
        assert row["status"] == "ok", row.get("error")
        assert row["method"] == "gradcam" and row["uncertainty_method"] == "tta" and row["agreement"] is not None
        assert isinstance(row["correct"], bool)
        assert row["inside_domain"] is None  # the tiny bundle states no training domain: unknown, not "inside"
        assert 0.0 <= row["deletion_auc"] <= 1.0 and row["stability_spearman"] is not None
        assert ("loc_pointing_hit" in row) == (centre is not None)  # localisation only against a lesion
        assert row["worker_model_loads"] == 1  # the model was loaded once in each worker
    assert "sanity_passed" in rows["case0"] and "sanity_passed" not in rows["case3"]  # the first 2 (broken, case0)
    assert "Audited 6 case(s): 5 measured, 1 failed" in run.stdout


def test_a_restart_skips_finished_cases_and_redoes_a_case_a_crash_cut_short(audited, cohort, classifier_bundle):
    out, _ = audited
    lines = (out / "cases.jsonl").read_text().splitlines()
    cut = json.loads(lines[-1])["case"]
    (out / "cases.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # torn line
    run = run_cli(*_audit(cohort, classifier_bundle, out))
    assert run.returncode == 0, run.stderr
    rows = _rows_tolerant(out)
    assert sorted(r["case"] for r in rows) == sorted({r["case"] for r in rows})  # none counted twice
    assert len(rows) == 6 and cut in {r["case"] for r in rows}
    assert "5 of 6 cases already audited" in run.stderr
    assert run.stderr.count(" cases: ") == 1 and f"cases: {cut} ok" in run.stderr  # only the torn case ran again


def _rows_tolerant(out) -> list[dict]:
    from XAIRobustnessLib.audit import ResultStore

    return ResultStore(out).rows()


def test_other_settings_or_other_files_in_out_are_refused(audited, cohort, classifier_bundle, tmp_path):
    out, _ = audited
    run = run_cli(*_audit(cohort, classifier_bundle, out, "--no-stability"))
    assert run.returncode == 2 and "other settings" in run.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    run = run_cli(*_audit(cohort, classifier_bundle, tmp_path / "mine"))
    assert run.returncode == 2 and "not a slicer-xai audit" in run.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_a_worker_killed_mid_run_loses_nothing_and_counts_no_case_twice(cohort, classifier_bundle, tmp_path):
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "XAIExplain"), str(ROOT / "XAIRobustness")])}
    process = subprocess.Popen([sys.executable, "-m", "XAICommandLine", *_audit(cohort, classifier_bundle, out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    try:
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and process.poll() is None:
            finished = _rows_tolerant(out) if (out / "cases.jsonl").exists() else []
            if finished:  # a worker is busy with its next case now: end it without warning
                victim = psutil.Process(finished[0]["worker_pid"])
                victim.send_signal(signal.SIGKILL)
                killed = victim.pid
            time.sleep(0.2)
        assert killed is not None, "no case finished in time to kill a worker"
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode(errors="replace")
    rows = _rows_tolerant(out)
    lines = [json.loads(line)["case"] for line in (out / "cases.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(lines) == sorted(set(lines)) == ["broken", "case0", "case1", "case2", "case3", "case4"]
    assert all(r["status"] == "ok" for r in rows if r["case"] != "broken")
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE


def test_the_report_ranks_flagged_cases_with_their_key_slice_and_viewer_command(audited):
    out, _ = audited
    text = (out / "audit-report.html").read_text(encoding="utf-8")
    assert "Failure-case explorer" in text and "AUC (finding probability vs label)" in text
    assert text.count("data:image/png;base64,") >= 1 and "slicer-xai viewer " in text
    assert "<h3 style='margin:0'>broken</h3>" in text and "failed" in text
    assert_viewer_commands_parse(text)


def assert_viewer_commands_parse(report_html: str) -> None:
    """Every viewer command in the report is one the viewer takes as written (its point included)."""
    import html
    import re
    import shlex

    from XAICommandLine.main import build_parser

    commands = [html.unescape(c) for c in re.findall(r"<code>(slicer-xai viewer [^<]*)</code>", report_html)]
    assert commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.model and (args.input or args.study)
        if "--at=" in command:
            assert len(parse_point(args.at)) == 3


def test_flags_rank_the_most_serious_first_and_metrics_carry_intervals():
    from XAIRobustnessLib.audit.report import cohort_metrics, flag_cases

    rows = [
        {"case": "fine", "status": "ok", "label": 1, "positive_probability": 0.9, "predicted_class": 1,
         "positive_class": 1, "confidence": 0.9, "correct": True, "loc_pointing_hit": True, "agreement": 1.0,
         "uncertainty_std": 0.01, "stability_spearman": 0.9},
        {"case": "drifts", "status": "ok", "label": 0, "positive_probability": 0.2, "predicted_class": 0,
         "positive_class": 1, "confidence": 0.8, "correct": True, "prediction_flips": ["gaussian-noise"]},
        {"case": "sure-but-wrong", "status": "ok", "label": 1, "positive_probability": 0.04, "predicted_class": 0,
         "positive_class": 1, "confidence": 0.96, "correct": False, "loc_pointing_hit": False},
        {"case": "unsure-and-wrong", "status": "ok", "label": 0, "positive_probability": 0.6, "predicted_class": 1,
         "positive_class": 1, "confidence": 0.6, "correct": False, "uncertainty_std": 0.3},
        {"case": "unreadable", "status": "error", "error": "broken.nii.gz contains NaN"},
    ]
    flagged = flag_cases(rows)
    assert [f.row["case"] for f in flagged] == ["unreadable", "sure-but-wrong", "unsure-and-wrong", "drifts"]
    assert flagged[1].reasons == ("confidently-wrong", "evidence-outside-lesion")
    assert flagged[2].reasons == ("wrong", "high-uncertainty") and flagged[3].reasons == ("unstable",)
    metrics = cohort_metrics(rows)
    auc, low, high, n = metrics["auc"]
    assert n == 4 and auc == 0.5 and 0.0 <= low <= auc <= high <= 1.0  # ranks: (0.9 > 0.6, 0.2), (0.04 < both)
    sensitivity, low, high, n = metrics["sensitivity"]
    assert (sensitivity, n) == (0.5, 2) and low < 0.5 < high
    assert metrics["failed"] == 1 and metrics["measured"] == 4


def test_the_viewer_steps_through_an_audits_flagged_cases(audited, tmp_path):
    from viewer_harness import browser, free_port, open_page, shot, viewer_process

    from XAIRobustnessLib.audit import ResultStore
    from XAIRobustnessLib.audit.report import flag_cases

    out, _ = audited
    flagged = [f.row["case"] for f in flag_cases(ResultStore(out).rows()) if f.row["status"] == "ok"]
    assert flagged, "the tiny model gets some cases wrong or unstable"
    with viewer_process(["--audit", str(out), "--port", str(free_port())]) as (url, _), browser() as instance:
        page = open_page(instance, url)
        time.sleep(1.0)
        shot(page, "audit-flagged-case")
        assert f"{flagged[0]} — " in page.inner_text("#audit-cases")


def test_an_existing_cluster_given_by_its_scheduler_address_does_the_work(cohort, classifier_bundle, tmp_path):
    """As on Slurm with dask-jobqueue: a scheduler and a worker started on their own (`dask scheduler`,
    `dask worker`), the audit only given the address."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "XAIExplain"), str(ROOT / "XAIRobustness")])}
    address_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(address_file)],
                                  env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not address_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        processes.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                           str(address_file), "--nthreads", "1", "--no-dashboard"],
                                          env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(tmp_path / "two.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["image", "label"], [str(cohort / "case0.nii.gz"), 1],
                                          [str(cohort / "case2.nii.gz"), 0]])
        run = run_cli("audit", "--model", str(classifier_bundle), "--manifest", str(tmp_path / "two.csv"),
                      "--out", str(tmp_path / "out"), "--scheduler", address, "--uncertainty", "none",
                      "--no-stability", "--no-faithfulness", "--sanity-cases", "0")
        assert run.returncode == 0, run.stderr
        rows = _rows(tmp_path / "out")
        assert sorted(r["case"] for r in rows) == ["case0", "case2"] and all(r["status"] == "ok" for r in rows)
        worker_pids = {p.pid for p in psutil.Process(processes[1].pid).children(recursive=True)} | {processes[1].pid}
        assert {r["worker_pid"] for r in rows} <= worker_pids  # the cluster's worker did the work, not the client
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
