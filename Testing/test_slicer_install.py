"""The extension as 3D Slicer runs it, in both install routes the README gives.

1. **Installed extension.** The project's own CMake lists are configured against a stand-in Slicer CMake
   package (``Testing/SlicerStandIn``, whose ``slicerMacroBuildScriptedModule`` copies what Slicer's does),
   built and installed into a temporary prefix.
2. **Additional module paths.** The checkout's ``XAIExplain`` and ``XAIRobustness`` folders, as Slicer puts
   them on ``sys.path`` when they are added in Application Settings > Modules.

In each, ``Testing/installed_tree_check.py`` runs in a Python that sees only that tree (``-S``: no .pth
files, so not the editable install) plus the site-packages of torch, MONAI and slicer-core, with a stand-in
``PythonSlicer`` on PATH that, like Slicer's launcher, starts the interpreter as a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
SCRIPTED_MODULES = Path("lib") / "Slicer-5.10" / "qt-scripted-modules"
_HELPERS = ("installed_tree_check.py", "slicer_standins.py")


def _launcher(folder: Path) -> Path:
    """A stand-in for Slicer's PythonSlicer: adds Slicer's own Python paths and starts python as a child."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = folder / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{SITE_PACKAGES}" "{sys.executable}" -S "$@"\n'
                        "exit $?\n", encoding="utf-8")
    launcher.chmod(0o755)
    return launcher


def _runCheck(mode: str, modulePaths: list[Path], root: Path, work: Path) -> dict:
    """``installed_tree_check.py <mode>`` copied outside the checkout, in the Python Slicer would give it."""
    helpers = work / "helpers"
    helpers.mkdir(parents=True, exist_ok=True)
    for name in _HELPERS:
        shutil.copy(ROOT / "Testing" / name, helpers / name)
    launcherDir = _launcher(work / "bin").parent
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "SLICER_XAI"))}
    environment.update(PATH=f"{launcherDir}{os.pathsep}{environment.get('PATH', '')}", HOME=str(work),
                       PYTHONPATH=os.pathsep.join([str(helpers), SITE_PACKAGES]))
    done = subprocess.run([sys.executable, "-S", str(helpers / "installed_tree_check.py"), mode, str(root),
                           *map(str, modulePaths)],
                          cwd=work, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installedTree(tmp_path_factory) -> Path:
    """The extension configured, built and installed as Slicer's build would; returns the prefix."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    work = tmp_path_factory.mktemp("slicer-build")
    build, prefix = work / "build", work / "install"
    for command in (["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={ROOT / 'Testing' / 'SlicerStandIn'}",
                     "-DBUILD_TESTING=OFF"],
                    ["cmake", "--build", str(build)],
                    ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return prefix


def test_install_holds_what_the_modules_load(installedTree):
    modules = installedTree / SCRIPTED_MODULES
    for relative in ("XAIExplain.py", "XAIRobustness.py", "Resources/UI/XAIExplain.ui", "Resources/UI/XAIRobustness.ui",
                     "Resources/Icons/XAIExplain.png", "XAICommandLine/__main__.py", "XAIRobustnessLib/sweep.py",
                     "XAIExplainLib/Resources/Tasks/tasks.json", "XAIExplainLib/Resources/SampleData/samples.json",
                     "XAIExplainLib/Resources/SampleData/brain-lesion-case1.nii.gz"):
        assert (modules / relative).is_file(), f"{relative} is not installed"
    source = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources" / "Models"
    for weights in source.glob("*/models/model.pt"):
        installed = modules / "XAIExplainLib" / "Resources" / "Models" / weights.relative_to(source)
        assert installed.read_bytes() == weights.read_bytes()
    # Nothing is installed outside the scripted-modules folder (Slicer would not look there).
    outside = [p for p in installedTree.rglob("*") if p.is_file() and modules not in p.parents]
    assert outside == []


def test_installed_extension_runs_the_sample_case(installedTree, tmp_path):
    modules = installedTree / SCRIPTED_MODULES
    report = _runCheck("use", [modules], modules, tmp_path)
    assert report["command"] == ["-m", "XAICommandLine"]
    assert set(report["models"]) >= {"brain-lesion-classifier", "chest-nodule-classifier"}


def test_additional_module_paths_route_runs_the_sample_case(tmp_path):
    report = _runCheck("use", [ROOT / "XAIExplain", ROOT / "XAIRobustness"], ROOT, tmp_path)
    assert Path(report["files"]["XAICommandLine"]).is_relative_to(ROOT / "XAIRobustness")


def test_cancel_ends_the_whole_process_tree(installedTree, tmp_path):
    modules = installedTree / SCRIPTED_MODULES
    report = _runCheck("cancel", [modules], modules, tmp_path)
    assert report["processes"] >= 2 and report["gone_s"] < 5.0
