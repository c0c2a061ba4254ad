"""The sample cases shipped in ``Resources/SampleData`` and how they are chosen.

Usage::

    python -m XAIExplainLib.data.samples --out Resources/SampleData

Each sample is the first case of a fixed ``(kind, seed)`` set that meets its description (for instance
"one clear lesion of at least 15 mm"), so the files are reproducible from this module alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import SimpleITK as sitk

from . import make_case

__all__ = ["SampleSpec", "SAMPLES", "find_sample", "write_samples"]


@dataclass(frozen=True)
class SampleSpec:
    """A shipped sample: file stem, generator set, and the condition the chosen case meets."""

    name: str
    kind: str
    seed: int
    description: str
    accept: Callable[[dict[str, Any]], bool]


def _one_clear_lesion(min_mm: float, kinds: Sequence[str], min_z_ras: float = -1e9) -> Callable[[dict[str, Any]], bool]:
    def accept(info: dict[str, Any]) -> bool:
        lesions = info["lesions"]
        return (len(lesions) == 1 and lesions[0]["size_mm"] >= min_mm and not lesions[0].get("subtle", False)
                and lesions[0]["kind"] in kinds and lesions[0]["centre_ras_mm"][2] >= min_z_ras)
    return accept


def _no_lesion(info: dict[str, Any]) -> bool:
    return info["label"] == 0


def _thick_slices(accept: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda info: accept(info) and info["acquisition"]["spacing_mm"][2] >= 5.0


SAMPLES = (
    SampleSpec("brain-lesion-case1", "brain-mri", 2024,
               "T1 brain with one clear ring-enhancing or enhancing supratentorial lesion of at least 15 mm "
               "(main demo case)",
               _one_clear_lesion(15.0, ("ring", "enhancing"), min_z_ras=0.0)),
    SampleSpec("brain-normal-case1", "brain-mri", 2024, "T1 brain without lesion", _no_lesion),
    SampleSpec("chest-nodule-case1", "chest-ct", 2024,
               "chest CT (5 mm slices) with one solid or spiculated nodule of at least 10 mm",
               _thick_slices(_one_clear_lesion(10.0, ("solid", "spiculated")))),
)


def find_sample(spec: SampleSpec, max_index: int = 200) -> tuple[sitk.Image, sitk.Image, dict[str, Any]]:
    """The first case of ``(spec.kind, spec.seed)`` that ``spec.accept`` takes."""
    for index in range(max_index):
        image, mask, info = make_case(spec.kind, spec.seed, index)
        if spec.accept(info):
            return image, mask, info
    raise RuntimeError(f"No case among the first {max_index} of {spec.kind} seed {spec.seed} fits '{spec.name}'.")


def write_samples(out_dir: Path, samples: Sequence[SampleSpec] = SAMPLES) -> list[dict[str, Any]]:
    """Write ``<name>.nii.gz``, ``<name>_mask.nii.gz`` and ``samples.json`` (provenance) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for spec in samples:
        image, mask, info = find_sample(spec)
        sitk.WriteImage(image, str(out_dir / f"{spec.name}.nii.gz"), useCompression=True)
        sitk.WriteImage(mask, str(out_dir / f"{spec.name}_mask.nii.gz"), useCompression=True)
        records.append({
            "name": spec.name,
            "description": spec.description,
            "kind": spec.kind,
            "seed": info["seed"],
            "index": info["index"],
            "label": info["label"],
            "lesions": info["lesions"],
            "spacing_mm": list(image.GetSpacing()),
            "size": list(image.GetSize()),
        })
    (out_dir / "samples.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return records


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Write the SlicerXAI sample cases.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for record in write_samples(args.out):
        print(f"{record['name']}: {record['kind']} seed {record['seed']} index {record['index']}")


if __name__ == "__main__":
    main()
