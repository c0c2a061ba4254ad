"""``slicer-xai report``: self-contained HTML per audience, key slices in radiological convention,
robustness results when given, and bad input -> one line, exit 2, no file."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from XAICommandLine import main as cli
from XAIExplainLib.audiences import get_audience
from XAIExplainLib.imageio import write_image
from XAIExplainLib.models import load_model
from XAIExplainLib.report import build_report, choose_methods
from XAIExplainLib.report.figures import _plane, _slice_numbers
from XAIExplainLib.tasks import get_task, methods_for_task

TRIAGE = ["--task", "brain-lesion-triage"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    image = make_image(blob_index=(12, 20, 16))
    k, j, i = np.indices(sitk.GetArrayViewFromImage(image).shape)
    mask = sitk.GetImageFromArray(((i - 12) ** 2 + (j - 20) ** 2 + (k - 16) ** 2 <= 16).astype(np.uint8))
    mask.CopyInformation(image)
    write_image(image, folder / "case.nii.gz")
    write_image(mask, folder / "case_mask.nii.gz")
    return folder


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_cli_writes_a_self_contained_radiologist_report(case, classifier_bundle, tmp_path, capsys):
    out = tmp_path / "r.html"
    code = cli.main(["report", str(case / "case.nii.gz"), "--model", str(classifier_bundle), *TRIAGE,
                     "--audience", "radiologist", "--mask", str(case / "case_mask.nii.gz"), "--samples", "2",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    html = out.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    pictures = _images(html)
    assert pictures and all(p.startswith(b"\x89PNG") for p in pictures)
    assert "patient&#x27;s right is on the left" in html
    assert "Main evidence" in html and "RAS (" in html and "Provenance" in html
    assert "Report (Radiologist)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_three_audiences_give_three_different_reports(case, classifier_bundle):
    image = sitk.ReadImage(str(case / "case.nii.gz"))
    model = load_model(classifier_bundle)
    task = get_task("brain-lesion-triage")
    reports = {a: build_report(image, model, task, a, samples=2, methods=None if a != "researcher" else ["gradcam", "ig"])
               for a in ("radiologist", "researcher", "teaching")}
    assert "Export" in reports["researcher"].html and "methods.csv" in reports["researcher"].html
    assert "Agreement between methods" in reports["researcher"].html
    assert "Uncertainty" in reports["researcher"].html  # the uncertainty map is shown to researchers
    assert "Export" not in reports["radiologist"].html and "Export" not in reports["teaching"].html
    assert "A doctor" in reports["teaching"].html and "right side is on the left" in reports["teaching"].html
    assert len(_images(reports["researcher"].html)) == 3  # two methods + uncertainty
    assert len(_images(reports["radiologist"].html)) == 1
    assert len({r.html for r in reports.values()}) == 3


def test_researcher_runs_every_method_the_model_can(classifier_bundle):
    model = load_model(classifier_bundle)
    task = get_task("brain-lesion-triage")
    assert choose_methods(task, model, get_audience("researcher")) == methods_for_task(task, model, include_avoided=True)
    assert choose_methods(task, model, get_audience("radiologist")) == ["gradcam"]


def test_segmentation_report_with_robustness_results(case, segmenter_bundle, tmp_path):
    evidence = tmp_path / "robustness"
    evidence.mkdir()
    (evidence / "sanity.json").write_text(json.dumps({"sanity": {"passed": True, "similarity": 0.1}}), encoding="utf-8")
    out = tmp_path / "seg.html"
    code = cli.main(["report", str(case / "case.nii.gz"), "--model", str(segmenter_bundle),
                     "--task", "brain-lesion-segmentation", "--audience", "researcher", "--method", "gradcam",
                     "--samples", "2", "--robustness", str(evidence), "--out", str(out)])
    assert code == 0
    html = out.read_text(encoding="utf-8")
    assert "Sanity check passed" in html and "mc-dropout" in html


@pytest.mark.parametrize("stored, on_picture_left", [("LPS", True), ("RAS", False)])
def test_key_slices_follow_the_radiological_convention(stored, on_picture_left):
    """Voxel i = 2 is near the patient's right edge of an LPS-stored volume (x grows to the left) and near
    the left edge of a RAS-stored one; the patient's right must show on the left of the axial picture."""
    direction = np.eye(3) if stored == "LPS" else np.diag([-1.0, -1.0, 1.0])
    image = make_image(size=(20, 20, 10), direction=direction)
    array = np.zeros((10, 20, 20), dtype=np.float32)
    array[5, 10, 2] = 1.0
    marked = sitk.GetImageFromArray(array)
    marked.CopyInformation(image)
    plane = _plane(sitk.GetArrayFromImage(sitk.DICOMOrient(marked, "LPS")), "axial", (0, 0, 5))
    column = int(np.argwhere(plane > 0)[0][1])
    assert (column < 10) == on_picture_left
    assert _slice_numbers(marked, marked.TransformIndexToPhysicalPoint((2, 10, 5)))["axial"] == 6


@pytest.mark.parametrize("arguments, message", [
    (["missing.nii.gz", "--model", "{bundle}", *TRIAGE], "missing.nii.gz"),
    (["{case}", "--model", "{bundle}", "--task", "knee-fracture"], "Unknown clinical task"),
    (["{case}", "--model", "{bundle}", *TRIAGE, "--audience", "journalist"], "Unknown audience"),
    (["{case}", "--model", "{bundle}", "--task", "lung-nodule-detection"], "made for MR images"),
    (["{case}", "--model", "{bundle}", *TRIAGE, "--robustness", "nowhere"], "does not exist"),
    (["{case}", "--model", "{bundle}", *TRIAGE, "--method", "bogus"], "invalid choice"),
])
def test_report_bad_input_is_one_line_exit_2_and_no_file(case, classifier_bundle, tmp_path, capsys, arguments, message):
    out = tmp_path / "out" / "r.html"
    argv = [a.format(case=case / "case.nii.gz", bundle=classifier_bundle) for a in arguments]
    try:
        code = cli.main(["report", *argv, "--out", str(out)])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_report_out_must_be_html(case, classifier_bundle, tmp_path, capsys):
    assert cli.main(["report", str(case / "case.nii.gz"), "--model", str(classifier_bundle), *TRIAGE,
                     "--out", str(tmp_path / "r.pdf")]) == cli.EXIT_USAGE
    assert ".html" in capsys.readouterr().err and not (tmp_path / "r.pdf").exists()
