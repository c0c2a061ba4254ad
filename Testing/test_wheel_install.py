"""The command line from a built wheel (not the editable install): the package carries its data.

The wheel is built from the checkout, unpacked into a folder, and run by a ``-S`` Python that sees that
folder and the site-packages of torch and MONAI but not the checkout or the editable finder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_models_and_explains_the_sample_case(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder whose stale files a later wheel would carry.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "out", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel, = (tmp_path / "wheel").glob("slicer_xai-*.whl")
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "SLICER_XAI"))}
    environment.update(HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))

    def cli(*args):
        return subprocess.run([sys.executable, "-S", "-m", "XAICommandLine", *args], capture_output=True, text=True,
                              env=environment, cwd=tmp_path, timeout=600)

    located = subprocess.run([sys.executable, "-S", "-c", "import XAIExplainLib.resources as r; print(r.resources_dir())"],
                             capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert Path(located.stdout.strip()).is_relative_to(target), located.stdout + located.stderr
    listed = cli("models", "list")
    assert listed.returncode == 0 and "brain-lesion-classifier" in listed.stdout, listed.stderr
    case = target / "XAIExplainLib" / "Resources" / "SampleData" / "brain-lesion-case1.nii.gz"
    done = cli("explain", str(case), "--model", "brain-lesion-classifier", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert result["prediction"]["predicted_label"] == "lesion"
    # The audit's Dask workers are new processes: they too must find the engine in the installed tree only.
    with open(tmp_path / "cohort.csv", "w", encoding="utf-8") as handle:
        handle.write("image,mask,label\n")
        for name, label in (("brain-lesion-case1", 1), ("brain-normal-case1", 0)):
            handle.write(f"{case.parent / name}.nii.gz,{case.parent / name}_mask.nii.gz,{label}\n")
    audited = cli("audit", "--model", "brain-lesion-classifier", "--manifest", str(tmp_path / "cohort.csv"),
                  "--out", str(tmp_path / "audit"), "--workers", "2", "--uncertainty", "none", "--no-stability",
                  "--no-faithfulness", "--sanity-cases", "0")
    assert audited.returncode == 0, audited.stderr[-3000:]
    assert "Audited 2 case(s): 2 measured, 0 failed" in audited.stdout
    assert (tmp_path / "audit" / "audit-report.html").is_file()
