"""`slicer-xai` as a user runs it: results on the input's grid, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, make_image, rotation

from XAICommandLine.main import main


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process, as a user would."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "XAIExplain"), str(ROOT / "XAIRobustness")]),
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "XAICommandLine", *args], capture_output=True, encoding="utf-8",
                          errors="replace", env=environment, timeout=300)


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cases") / "oblique.nii.gz"
    image = make_image(size=(41, 37, 23), spacing=(1.2, 0.9, 2.7), direction=rotation("z", 20) @ rotation("x", 10),
                       origin=(-20.5, 11.25, 5.0), blob_index=(25, 20, 12))
    sitk.WriteImage(image, str(path))
    return path


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)


def test_explain_writes_maps_on_the_input_grid_and_a_result(oblique_case, segmenter_bundle, tmp_path):
    out = tmp_path / "out"
    result = run_cli("explain", str(oblique_case), "--model", str(segmenter_bundle), "--method", "gradcam",
                     "--uncertainty", "mc-dropout", "--samples", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Results in" in result.stdout
    image = sitk.ReadImage(str(oblique_case))
    for name in ("saliency", "uncertainty", "segmentation"):
        written = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        _same_grid(written, image)
    assert sitk.ReadImage(str(out / "saliency.nii.gz")).GetPixelID() == sitk.sitkFloat32
    report = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert abs(sum(report["prediction"]["probabilities"].values()) - 1) < 1e-5
    assert report["explanation"]["method"] == "gradcam"
    assert report["provenance"]["model"]["sha256"] == report["provenance"]["model"]["sha256"].lower()
    assert len(report["provenance"]["model"]["sha256"]) == 64
    assert report["provenance"]["software"].startswith("slicer-xai ")
    assert report["uncertainty"]["method"] == "mc-dropout"
    assert set(report["timings_s"]) >= {"predict", "explain", "uncertainty"}
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_classifier_probabilities_and_nrrd_output(oblique_case, classifier_bundle, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", str(oblique_case), "--model", str(classifier_bundle), "--method", "occlusion",
                 "--occlusion-window", "6", "--occlusion-mode", "approximate", "--format", "nrrd", "--target", "lesion",
                 "--out", str(out)]) == 0
    report = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert report["explanation"]["parameters"]["mode"] == "approximate"
    assert report["explanation"]["parameters"]["window"] == 6
    assert report["prediction"]["class_names"] == ["no lesion", "lesion"]
    assert abs(sum(report["prediction"]["probabilities"].values()) - 1) < 1e-5
    assert report["explanation"]["target"]["class_name"] == "lesion"
    _same_grid(sitk.ReadImage(str(out / "saliency.nrrd")), sitk.ReadImage(str(oblique_case)))


def test_same_seed_same_result(oblique_case, segmenter_bundle, tmp_path):
    outputs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        assert main(["explain", str(oblique_case), "--model", str(segmenter_bundle), "--method", "smoothgrad",
                     "--smoothgrad-samples", "4", "--uncertainty", "mc-dropout", "--samples", "3",
                     "--seed", str(seed), "--out", str(out)]) == 0
        outputs.append([sitk.GetArrayFromImage(sitk.ReadImage(str(out / f))) for f in ("saliency.nii.gz", "uncertainty.nii.gz")])
    for first, second in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(outputs[0][1], outputs[2][1])


def _write_array(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def _write_4d(path: Path) -> Path:
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.random.rand(10, 10, 10, 3).astype(np.float32), np.eye(4)), str(path))
    return path


def _bad_inputs(folder: Path) -> dict[str, Path]:
    good = make_image(size=(20, 20, 20))
    nan = sitk.GetArrayFromImage(good)
    nan[3, 4, 5] = np.nan
    inf = sitk.GetArrayFromImage(good)
    inf[1, 1, 1] = np.inf
    truncated = folder / "truncated.nii.gz"
    sitk.WriteImage(good, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:400])
    empty = folder / "empty.nii.gz"
    empty.write_bytes(b"")
    text = folder / "notes.nii.gz"
    text.write_text("this is not an image\n", encoding="utf-8")
    return {
        "NaN": _write_array(folder / "nan.nii.gz", nan),
        "infinite": _write_array(folder / "inf.nii.gz", inf),
        "4-D": _write_4d(folder / "four.nii.gz"),
        "values per voxel": _write_array(folder / "vector.nrrd", np.random.rand(10, 10, 10, 3).astype(np.float32), vector=True),
        "2-D": _write_array(folder / "flat.nrrd", np.random.rand(30, 30).astype(np.float32)),
        "same value": _write_array(folder / "constant.nii.gz", np.zeros((10, 10, 10), np.float32)),
        "only 1 voxel": _write_array(folder / "one-slice.nii.gz", np.random.rand(1, 30, 30).astype(np.float32)),
        "Could not read": truncated,
        "empty": empty,
        "Could not read ": text,
        "not found": folder / "missing.nii.gz",
        "without a DICOM series": folder,
    }


def test_bad_inputs_get_one_line_exit_2_and_nothing_written(classifier_bundle, tmp_path, capfd):
    cases = tmp_path / "bad"
    cases.mkdir()
    for expected, path in _bad_inputs(cases).items():
        out = tmp_path / f"out-{path.name}"
        code = main(["explain", str(path), "--model", str(classifier_bundle), "--out", str(out)])
        stderr = capfd.readouterr().err  # file-descriptor level: native ITK messages would show here too
        assert code == 2, (expected, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (expected, stderr)
        assert expected.strip() in lines[0] and "Traceback" not in stderr
        assert not out.exists(), f"{expected}: {out} was created"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_bad_input_from_the_console_script(tmp_path):
    """The entry point in a fresh process: one line, exit code 2, no traceback."""
    result = run_cli("explain", str(tmp_path / "missing.nii.gz"), "--model", "brain-lesion-classifier",
                     "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Input not found" in result.stderr


def test_bad_model_and_arguments_get_one_line(oblique_case, tmp_path, capfd):
    for args, expected in (
        (["--model", "no-such-model"], "Model not found"),
        (["--model", str(tmp_path)], "not a MONAI bundle"),
        (["--model", str(oblique_case)], "neither a MONAI bundle"),
        (["--method", "lime", "--model", "x"], "invalid choice"),
    ):
        try:
            code = main(["explain", str(oblique_case), *args, "--out", str(tmp_path / "out")])
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
        stderr = capfd.readouterr().err
        assert code == 2
        assert len(stderr.strip().splitlines()) == 1 and expected in stderr, stderr
        assert not (tmp_path / "out").exists()


def test_existing_results_survive_a_failed_run(oblique_case, classifier_bundle, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", str(oblique_case), "--model", str(classifier_bundle), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["explain", str(oblique_case), "--model", str(classifier_bundle), "--target", "tumour",
                 "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_models_list_and_show(classifier_bundle, segmenter_bundle, capsys):
    resources = classifier_bundle.parent.parent / "resources"
    (resources / "Models").mkdir(parents=True, exist_ok=True)
    for bundle in (classifier_bundle, segmenter_bundle):
        link = resources / "Models" / bundle.name
        if not link.exists():
            link.symlink_to(bundle)
    env = {"SLICER_XAI_RESOURCES": str(resources)}
    listed = run_cli("models", "list", env=env)
    assert listed.returncode == 0
    assert "tiny-classifier" in listed.stdout and "classification" in listed.stdout
    assert "tiny-segmenter" in listed.stdout and "segmentation" in listed.stdout
    shown = run_cli("models", "show", "tiny-segmenter", "--json", env=env)
    card = json.loads(shown.stdout)
    assert card["task"] == "segmentation" and card["weights_sha256_recorded"] == card["weights_sha256_actual"]
