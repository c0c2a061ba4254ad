"""Where the extension's data lives: demo model bundles, sample cases and the clinical task catalogue.

The data is inside this package (``XAIExplainLib/Resources``), so one relative path holds in every place
the code runs from: the source checkout, an editable or a wheel install, Slicer's build tree and an
installed extension (``<extension>/lib/Slicer-X.Y/qt-scripted-modules/XAIExplainLib/Resources``, where
``slicerMacroBuildScriptedModule`` copies the files the module's CMakeLists lists as RESOURCES).
Imports nothing beyond the standard library: the Slicer modules read it before torch is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RESOURCES_ENV", "resources_dir", "bundled_models_dir", "sample_data_dir", "sample_case_path",
           "tasks_dir"]

#: Environment variable naming another Resources folder (tests, site-specific model sets).
RESOURCES_ENV = "SLICER_XAI_RESOURCES"


def resources_dir() -> Path:
    """``$SLICER_XAI_RESOURCES`` if set, else the ``Resources`` folder beside this file."""
    override = os.environ.get(RESOURCES_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "Resources"


def bundled_models_dir() -> Path:
    return resources_dir() / "Models"


def sample_data_dir() -> Path:
    return resources_dir() / "SampleData"


def sample_case_path(name: str = "brain-lesion-case1") -> Path:
    return sample_data_dir() / f"{name}.nii.gz"


def tasks_dir() -> Path:
    return resources_dir() / "Tasks"
