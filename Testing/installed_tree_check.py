"""What a Slicer user does with the modules, run in a Python that sees only one tree of them.

Run by Testing/test_slicer_install.py as ``python -S installed_tree_check.py <mode> <expected root>
<module folder>...``: the module folders go on ``sys.path`` only, as Slicer's module search puts them (never
in the environment a child process inherits); the site-packages holding torch, MONAI and slicer-core come
from ``PYTHONPATH``, which is then removed from the environment (Slicer's launcher sets its own for each
process). Neither the checkout nor the editable install is importable.
Modes: ``use`` (both Logics on the sample case, in process and through the Widget's background command)
and ``cancel`` (a long background run cancelled: the whole process tree gone within 5 s, nothing left).
Prints one JSON object of what it measured; any failed check raises.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

sys.path[:0] = sys.argv[3:]
os.environ.pop("PYTHONPATH", None)

import slicer_standins  # noqa: E402

slicer_standins.install()

import SimpleITK as sitk  # noqa: E402

import slicer  # noqa: E402
import XAIExplain  # noqa: E402
import XAIRobustness  # noqa: E402
from XAIExplainLib import mrml  # noqa: E402
from XAIExplainLib.background import ThreadJob  # noqa: E402


def _checkOnlyThisTree(root: Path) -> dict:
    import XAICommandLine
    import XAIExplainLib
    import XAIRobustnessLib

    files = {m.__name__: Path(m.__file__).resolve() for m in (XAIExplain, XAIRobustness, XAIExplainLib,
                                                              XAIRobustnessLib, XAICommandLine)}
    for name, path in files.items():
        assert root in path.parents, f"{name} came from {path}, not from {root}"
    assert not any("editable" in type(finder).__module__ for finder in sys.meta_path), "the editable install is visible"
    return {name: str(path) for name, path in files.items()}


def _explainParameters(inputNode, method="gradcam", uncertainty="none", samples=4):
    return types.SimpleNamespace(
        inputVolume=inputNode, model=XAIExplain.SAMPLE_MODEL_NAME, trustModel=False, clinicalTask="",
        audience=XAIExplain.Audience.RADIOLOGIST, method=XAIExplain.ExplanationMethod(method), target="",
        uncertaintyMethod=XAIExplain.UncertaintyMethod(uncertainty), samples=samples, opacity=0.5, threshold=0.2,
        outputSaliency=None, outputUncertainty=None)


def _sampleNode(scene):
    path = Path(XAIExplain.SAMPLE_CASE_PATH)
    assert path.is_file(), f"the sample case is not installed: {path}"
    return mrml.imageToVolumeNode(scene, sitk.ReadImage(str(path)), "brain-lesion-case1")


def use(root: Path) -> dict:
    report = {"files": _checkOnlyThisTree(root)}
    logic = XAIExplain.XAIExplainLogic()
    models = {entry["name"] for entry in logic.bundledModels()}
    assert {"brain-lesion-classifier", "brain-lesion-segmenter", "chest-nodule-classifier"} <= models, models
    tasks = logic.clinicalTasks(XAIExplain.SAMPLE_MODEL_NAME)
    assert tasks and all(logic.recommendedMethod(task) for task, _title in tasks), tasks
    assert [name for name, _path in logic.sampleCases()][:1] == ["brain-lesion-case1"]
    report.update(models=sorted(models), tasks=[task for task, _title in tasks])

    scene = slicer.vtkMRMLScene()
    inputNode = _sampleNode(scene)
    parameters = _explainParameters(inputNode)
    started = time.monotonic()
    nodes = logic.explain(parameters)
    report["in_process_s"] = round(time.monotonic() - started, 2)
    assert nodes.saliency.GetImageData().GetDimensions() == inputNode.GetImageData().GetDimensions()
    assert nodes.saliency.GetAttribute("XAI.predictedLabel") == "lesion"

    # The exact command the Widget's Apply launches, with the same environment.
    argv, environment = logic.backgroundCommand(["--version"])
    assert argv[0] == shutil.which("PythonSlicer"), argv
    for folder in environment["PYTHONPATH"].split(os.pathsep)[:len(logic.enginePythonPath())]:
        assert root in Path(folder).resolve().parents or Path(folder).resolve() == root, folder
    progress = []
    started = time.monotonic()
    job = logic.startExplain(parameters, progressCallback=lambda f, m: progress.append(f), waitForCompletion=True)
    report["background_s"] = round(time.monotonic() - started, 2)
    assert job.returnCode == 0, f"{job.errorMessage}\n" + "\n".join(job.lastLines)
    assert progress and progress[-1] == 1.0, progress
    count = scene.GetNumberOfNodes()
    shown = logic.applyRunResults(parameters, job)
    assert scene.GetNumberOfNodes() == count, "a re-run added nodes instead of replacing its results"
    assert shown.saliency is parameters.outputSaliency and not os.path.exists(job.temporaryDirectory)
    assert "lesion" in logic.summaryText(parameters)
    report["command"] = job.argv[1:3]
    # "Trust this model" reaches the command line, and only when ticked.
    assert "--trust-bundle" not in job.argv
    trusted = types.SimpleNamespace(**{**vars(parameters), "trustModel": True})
    assert "--trust-bundle" in logic.explainArguments(trusted, "input.nrrd", "results")

    # XAIRobustness: a short sweep as the Widget runs it (a background thread, shown on the main thread).
    robustness = XAIRobustness.XAIRobustnessLogic()
    sweepParameters = types.SimpleNamespace(
        inputVolume=inputNode, model=XAIExplain.SAMPLE_MODEL_NAME, trustModel=False,
        method=XAIExplain.ExplanationMethod.GRADCAM, perturbation=XAIRobustness.Perturbation.GAUSSIAN_NOISE,
        maxSeverity=1, opacity=0.5, threshold=0.2, outputTable=None, outputPerturbed=None, reference=None)
    work, show = robustness.backgroundTask("sweep", sweepParameters)
    sweepJob = ThreadJob(work).start()
    assert sweepJob.wait(600) and sweepJob.error is None, sweepJob.errorMessage
    table = show(sweepJob.result)
    assert table.GetNumberOfRows() == 2 and robustness.lastChartNode is not None
    assert sweepParameters.outputPerturbed is not None
    return report


def _groupAlive(group: int) -> list[int]:
    """Processes of process group ``group`` that are still running (zombies excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def cancel(root: Path) -> dict:
    _checkOnlyThisTree(root)
    logic = XAIExplain.XAIExplainLogic()
    scene = slicer.vtkMRMLScene()
    inputNode = _sampleNode(scene)
    count = scene.GetNumberOfNodes()
    # Occlusion with test-time augmentation: minutes on the CPU, far longer than the test waits.
    job = logic.launchExplain(_explainParameters(inputNode, method="occlusion", uncertainty="tta", samples=16))
    deadline = time.monotonic() + 120
    while not job.poll() and not job.finished and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not job.finished, f"the run ended before it could be cancelled: {job.lastLines}"
    processes = _groupAlive(job.pid)
    assert len(processes) >= 2, f"expected the launcher and its python child, found {processes}"
    started = time.monotonic()
    job.cancel()
    while _groupAlive(job.pid) and time.monotonic() - started < 10:
        time.sleep(0.05)
    gone_s = time.monotonic() - started
    assert not _groupAlive(job.pid), f"still running after {gone_s:.1f} s: {_groupAlive(job.pid)}"
    assert job.wait(5) and job.cancelled and job.poll() is not None and job.finished
    assert os.listdir(job.temporaryDirectory) == ["input.nrrd"], os.listdir(job.temporaryDirectory)
    job.cleanup()
    assert not os.path.exists(job.temporaryDirectory)
    assert scene.GetNumberOfNodes() == count, "a cancelled run left nodes in the scene"
    return {"processes": len(processes), "gone_s": round(gone_s, 2)}


if __name__ == "__main__":
    mode, root = sys.argv[1], Path(sys.argv[2]).resolve()
    print(json.dumps({"use": use, "cancel": cancel}[mode](root)))
