"""What a case's mask says about its lesions, and the ``labels.csv`` written beside the cases.

``labels.csv`` columns: ``case, label, lesion_count, lesion_sizes_mm, lesion_centres_ras_mm``. Sizes are
equivalent-sphere diameters ``(6V/π)^(1/3)`` of each labelled lesion in the mask; centres are the
lesion centroids in RAS millimetres (SimpleITK's LPS with x and y negated). Lists are separated by
``;`` and the three coordinates of a centre by spaces.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["describe_lesions", "labels_row", "write_labels_csv", "read_labels_csv", "LABEL_COLUMNS"]

LABEL_COLUMNS = ("case", "label", "lesion_count", "lesion_sizes_mm", "lesion_centres_ras_mm")


def describe_lesions(mask: sitk.Image, recipes: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """One entry per non-zero label of ``mask``: ``label``, ``voxels``, ``size_mm``, ``centre_ras_mm``,
    plus the generator's recipe of that lesion when ``recipes`` (one per label, label 1 first) are given."""
    array = sitk.GetArrayViewFromImage(mask)
    voxel_volume = float(np.prod(mask.GetSpacing()))
    lesions = []
    for label in (int(v) for v in np.unique(array) if v != 0):
        index_zyx = np.argwhere(array == label)
        centroid_xyz = index_zyx.mean(axis=0)[::-1]
        lps = np.asarray(mask.TransformContinuousIndexToPhysicalPoint(centroid_xyz.tolist()))
        volume = index_zyx.shape[0] * voxel_volume
        lesions.append(
            {
                "label": label,
                "voxels": int(index_zyx.shape[0]),
                "size_mm": float((6.0 * volume / np.pi) ** (1.0 / 3.0)),
                "centre_ras_mm": [float(-lps[0]), float(-lps[1]), float(lps[2])],
                **(recipes[label - 1] if recipes else {}),
            }
        )
    return lesions


def labels_row(case_id: str, lesions: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The ``labels.csv`` row of one case."""
    lesions = list(lesions)
    return {
        "case": case_id,
        "label": "1" if lesions else "0",
        "lesion_count": str(len(lesions)),
        "lesion_sizes_mm": ";".join(f"{l['size_mm']:.1f}" for l in lesions),
        "lesion_centres_ras_mm": ";".join(" ".join(f"{c:.1f}" for c in l["centre_ras_mm"]) for l in lesions),
    }


def write_labels_csv(rows: Iterable[Mapping[str, str]], path: Path) -> Path:
    """Write ``rows`` (from :func:`labels_row`) as ``labels.csv``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row))
    return path


def read_labels_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ``labels.csv``."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
