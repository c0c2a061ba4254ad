"""What the Slicer modules decide without Qt: background jobs (output decoding, cancel), the dependency
install arguments, the Slicer-version guard and the Sample Data registration.

The module file is imported with stand-ins for the application parts slicer-core lacks
(``Testing/slicer_standins.py``); the jobs are ``XAIExplainLib.background``'s, as the Widgets use them.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

slicer = pytest.importorskip("slicer")

from slicer_standins import explainParameters  # noqa: E402
from XAIExplainLib.background import ProcessJob, ThreadJob  # noqa: E402


def test_undecodable_output_does_not_stop_the_reader():
    script = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe bad bytes\\n[ 50%] half\\n'); sys.stdout.flush();" \
             "print('slicer-xai: error: the input is broken.'); sys.exit(2)"
    job = ProcessJob([sys.executable, "-c", script]).start()
    assert job.wait(30)
    progress = job.poll()
    assert job.finished and job.returnCode == 2
    assert progress == [(0.5, "half")]
    assert job.errorMessage == "the input is broken."
    assert any("bad bytes" in line for line in job.lastLines)


def test_thread_job_reports_progress_result_and_cancel():
    def work(progress, cancel):
        for step in range(200):
            progress(step / 200, f"step {step}")
            cancel.raise_if_cancelled()
            time.sleep(0.01)
        return "done"

    finished = ThreadJob(lambda progress, cancel: "result").start()
    assert finished.wait(10) and finished.poll() == [] and finished.finished and finished.result == "result"
    job = ThreadJob(work).start()
    while not job.poll():
        time.sleep(0.01)
    job.cancel()
    assert job.wait(5) and job.cancelled and job.result is None and job.error is None

    def failing(progress, cancel):
        raise ValueError("the reference segmentation is empty")

    failed = ThreadJob(failing).start()
    assert failed.wait(10) and isinstance(failed.error, ValueError)
    assert failed.errorMessage == "the reference segmentation is empty"


def test_pip_install_holds_torch_and_refuses_an_old_one(explainModule):
    logic = explainModule.XAIExplainLogic
    arguments = logic.pipRequirements("2.9.1+cu128")
    assert arguments[-1] == "torch==2.9.1+cu128"
    assert "monai==1.6.1" in arguments and "captum==0.9.0" in arguments
    with pytest.raises(RuntimeError, match="older than the 2.8"):
        logic.pipRequirements("2.4.0")


def test_an_old_slicer_is_named_instead_of_failing_in_pip(explainModule, monkeypatch):
    logic = explainModule.XAIExplainLogic()
    assert logic.unsupportedSlicerMessage() == ""
    monkeypatch.setattr(sys, "version_info", (3, 9, 10, "final", 0))
    message = logic.unsupportedSlicerMessage()
    assert "5.10" in message and "3.9" in message
    with pytest.raises(RuntimeError, match="5.10"):
        logic.ensureDependencies(askConfirmation=False)


def test_sample_cases_are_registered_with_sample_data(explainModule, monkeypatch):
    registered = []
    sampleData = types.ModuleType("SampleData")
    sampleData.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sampleData)
    explainModule.registerSampleData()
    names = [entry["sampleName"] for entry in registered]
    assert names[0] == "brain-lesion-case1" and "chest-nodule-case1" in names
    for entry in registered:
        path = Path(url2pathname(urlparse(entry["uris"]).path))
        assert urlparse(entry["uris"]).scheme == "file" and path.is_file() and path.name == entry["fileNames"]
        assert entry["loadFileTypes"] == "VolumeFile" and Path(entry["thumbnailFileName"]).is_file()


def test_the_slicer_logic_explains_a_zoo_bundle(explainModule, tmp_path):
    from conftest import make_image
    from XAIExplainLib import mrml
    from zoo_bundles import SPLEEN_LIKE, write_zoo_bundle

    bundle = str(write_zoo_bundle(tmp_path / "spleen_ct_segmentation", SPLEEN_LIKE))
    logic = explainModule.XAIExplainLogic()
    assert logic.modelClassNames(bundle) == ["background", "spleen"]
    assert logic.clinicalTasks(bundle)[0][0] == "ct-structure-segmentation"
    scene = slicer.vtkMRMLScene()
    inputNode = mrml.imageToVolumeNode(scene, make_image(size=(40, 36, 30), spacing=(1.2, 1.2, 2.0)), "ct")
    nodes = logic.explain(explainParameters(explainModule, inputNode, bundle))
    assert nodes.saliency.GetImageData().GetDimensions() == inputNode.GetImageData().GetDimensions()
    assert nodes.segmentation is not None
    # The target picker after the run: one structure predicted at most, so nothing listed twice or first.
    assert [value for _title, value in logic.targetChoices(bundle)] == ["", "background", "spleen"]
    # With several structures predicted, they come first, largest first, with their volumes.
    logic.lastResult.prediction.update(class_names=["background", "spleen", "liver"],
                                       volumes_ml={"background": 9.0, "spleen": 2.0, "liver": 5.0})
    names = ["background", "spleen", "liver"]
    logic.modelClassNames = lambda model: names
    assert logic.targetChoices(bundle)[1:3] == [("Predicted: liver (5.0 ml)", "liver"), ("Predicted: spleen (2.0 ml)", "spleen")]


def test_the_slicer_logic_takes_one_volume_per_channel(explainModule, tmp_path):
    import json

    from conftest import make_image
    from XAIExplainLib import mrml
    from zoo_bundles import BRATS_LIKE, write_zoo_bundle

    bundle = write_zoo_bundle(tmp_path / "brats", BRATS_LIKE, network_def={**BRATS_LIKE["network_def"], "in_channels": 2})
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["network_data_format"]["inputs"]["image"].update(num_channels=2, channel_def={"0": "T1c", "1": "FLAIR"})
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    logic = explainModule.XAIExplainLogic()
    scene = slicer.vtkMRMLScene()
    t1c = mrml.imageToVolumeNode(scene, make_image(size=(36, 32, 30), spacing=(1.0, 1.0, 1.5)), "t1c")
    parameters = explainParameters(explainModule, t1c, str(bundle), method="GRADIENT")
    assert logic.modelChannelNames(str(bundle)) == ["T1c", "FLAIR"]
    assert logic.missingChannels(parameters) == ["FLAIR"]
    with pytest.raises(ValueError, match="every input channel: FLAIR"):
        logic.explain(parameters)
    parameters.channel2Volume = mrml.imageToVolumeNode(scene, make_image(size=(30, 28, 24), spacing=(1.2, 1.2, 1.8),
                                                                         seed=4), "flair")
    nodes = logic.explain(parameters)
    assert nodes.saliency.GetImageData().GetDimensions() == t1c.GetImageData().GetDimensions()
    job = logic.launchExplain(parameters)  # the background run writes both volumes and passes both
    assert job.wait(300) and job.returnCode == 0, job.errorMessage
    assert sum(argument.endswith(".nrrd") for argument in job.argv) == 2
    assert "channel_evidence" in logic.readRunResults(job).report["explanation"]
    job.cleanup()
