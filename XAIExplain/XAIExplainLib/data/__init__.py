"""Synthetic demo cases where the lesion's position is known: brain T1 MRI and chest CT.

``make_case(kind, seed, index)`` returns one case in memory; ``synthesize(kind, n, seed, out_dir)``
writes ``n`` cases as ``<case_id>.nii.gz`` + ``<case_id>_mask.nii.gz`` and a ``labels.csv``. Every case
is a pure function of ``(kind, seed, index)`` — a :class:`numpy.random.Generator` seeded with
``SeedSequence([seed, index, kind code])`` — so the same seed gives byte-identical arrays.

Kinds: ``brain-mri`` (:mod:`.brain`, real anatomy from the MNI152 2009a template) and ``chest-ct``
(:mod:`.chest`, a procedural Hounsfield-unit phantom with lung nodules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

from .records import LABEL_COLUMNS, labels_row, read_labels_csv, write_labels_csv

__all__ = ["KINDS", "make_case", "synthesize", "case_id", "read_labels_csv", "LABEL_COLUMNS"]

KINDS = ("brain-mri", "chest-ct")
_KIND_CODES = {"brain-mri": 1, "chest-ct": 2}


def case_id(kind: str, seed: int, index: int) -> str:
    """File stem of case ``index`` of a synthesised set, e.g. ``brain-mri-s7-0003``."""
    return f"{kind}-s{seed}-{index:04d}"


def _generator(kind: str, seed: int, index: int) -> np.random.Generator:
    if kind not in _KIND_CODES:
        raise ValueError(f"Unknown case kind '{kind}'; choose one of {', '.join(KINDS)}.")
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative integers.")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), _KIND_CODES[kind]]))


def make_case(
    kind: str, seed: int, index: int = 0, lesions: Optional[bool] = None, small_nodule_fraction: float = 0.0
) -> tuple[sitk.Image, sitk.Image, dict[str, Any]]:
    """Case ``index`` of the set ``(kind, seed)``: ``(image, mask, info)``.

    ``info`` holds ``label`` (0/1), ``lesions`` (size, RAS centre and recipe of each) and the
    acquisition parameters drawn for the case. ``lesions=True`` / ``False`` gives the case's twin with
    at least one / no lesion (same anatomy and acquisition); ``None`` follows the set's distribution.
    ``small_nodule_fraction`` (chest CT, training sets): that share of the nodules drawn at 6-10 mm.
    """
    rng = _generator(kind, seed, index)
    if kind == "brain-mri":
        if small_nodule_fraction:
            raise ValueError("small_nodule_fraction is a chest CT option.")
        from .brain import make_brain_case

        image, mask, info = make_brain_case(rng, lesions)
    else:
        from .chest import make_chest_case

        image, mask, info = make_chest_case(rng, lesions, small_nodule_fraction)
    info.update({"case": case_id(kind, seed, index), "seed": int(seed), "index": int(index)})
    return image, mask, info


def synthesize(
    kind: str,
    n: int,
    seed: int,
    out_dir: str | Path,
    progress: Optional[Callable[[float, str], None]] = None,
) -> Path:
    """Write ``n`` cases of ``kind`` generated from ``seed`` into ``out_dir``; return ``out_dir``.

    Files: ``<case>.nii.gz`` (image), ``<case>_mask.nii.gz`` (uint8 lesion labels 1..k) and
    ``labels.csv`` (``case, label, lesion_count, lesion_sizes_mm, lesion_centres_ras_mm``).
    ``progress(fraction, message)`` is called after each case.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown case kind '{kind}'; choose one of {', '.join(KINDS)}.")
    if n < 1:
        raise ValueError("n must be at least 1.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        image, mask, info = make_case(kind, seed, index)
        name = info["case"]
        sitk.WriteImage(image, str(out / f"{name}.nii.gz"), useCompression=True)
        sitk.WriteImage(mask, str(out / f"{name}_mask.nii.gz"), useCompression=True)
        rows.append(labels_row(name, info["lesions"]))
        if progress is not None:
            progress((index + 1) / n, f"{name}: {info['label'] and 'lesion' or 'no lesion'}")
    write_labels_csv(rows, out / "labels.csv")
    return out
