"""A tiny nnU-Net v2 results folder, made with nnunetv2's own tools on generated cases (nothing downloaded).

nnU-Net plans and preprocesses a raw dataset of six generated CT-like cases (a bright blob labelled 1 in
smooth soft-tissue noise, anisotropic 1x1x2.5 mm voxels), then its own trainer, shortened to one epoch of two
iterations, trains fold 0 on the CPU and writes ``checkpoint_final.pth`` as it always does. What comes out is
laid out as a user's results folder::

    Dataset777_Blob/nnUNetTrainer__nnUNetPlans__3d_fullres/{dataset.json, plans.json, fold_0/checkpoint_final.pth}

nnunetv2 reads its folders from environment variables at import, so the work runs in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATASET_ID, DATASET_NAME = 777, "Dataset777_Blob"
CASES = 6


def blob_case(seed: int, size=(40, 36, 20), spacing=(1.0, 1.0, 2.5)) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like volume in HU with a bright blob, and its label map (1 = blob)."""
    rng = np.random.default_rng(seed)
    shape = size[::-1]  # (z, y, x)
    image = 40.0 + 15.0 * rng.standard_normal(shape)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = (rng.uniform(7, 13), rng.uniform(12, 24), rng.uniform(12, 28))
    radius = rng.uniform(4.0, 6.0)
    inside = ((zz - centre[0]) * spacing[2]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2 + \
        ((xx - centre[2]) * spacing[0]) ** 2 < radius ** 2 * 4
    image[inside] += 120.0
    volume = sitk.GetImageFromArray(image.astype(np.float32))
    labels = sitk.GetImageFromArray(inside.astype(np.uint8))
    for item in (volume, labels):
        item.SetSpacing(spacing)
        item.SetOrigin((-20.0, -18.0, -25.0))
    return volume, labels


_TRAIN = textwrap.dedent("""
    import json, sys
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    class nnUNetTrainerTiny(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1

    torch.set_num_threads(2)
    dataset = int(sys.argv[1])
    extract_fingerprints([dataset], num_processes=1, check_dataset_integrity=True)
    plan_experiments([dataset])
    preprocess([dataset], configurations=("3d_fullres",), num_processes=(1,))
    name = maybe_convert_to_dataset_name(dataset)
    from nnunetv2.paths import nnUNet_preprocessed
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    plans = load_json(join(nnUNet_preprocessed, name, "nnUNetPlans.json"))
    dataset_json = load_json(join(nnUNet_preprocessed, name, "dataset.json"))
    import os
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process (planning wanted a positive count)
    plans["continue_training"] = False  # nnUNetv2_train's entry point sets it
    trainer = nnUNetTrainerTiny(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    trainer.run_training()
""")


def build_nnunet_results(folder: Path) -> Path:
    """Make the results folder under ``folder`` and return its trained-model folder (dataset.json, plans.json, fold_0)."""
    raw = folder / "raw" / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for index in range(CASES):
        image, labels = blob_case(seed=100 + index)
        sitk.WriteImage(image, str(raw / "imagesTr" / f"blob_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(labels, str(raw / "labelsTr" / f"blob_{index:03d}.nii.gz"))
    import json

    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "blob": 1}, "numTraining": CASES,
        "file_ending": ".nii.gz", "name": "Blob"}), encoding="utf-8")
    env = {**os.environ, "nnUNet_raw": str(folder / "raw"), "nnUNet_preprocessed": str(folder / "preprocessed"),
           "nnUNet_results": str(folder / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
           "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _TRAIN, str(DATASET_ID)], env=env, cwd=folder, capture_output=True,
                          encoding="utf-8", errors="replace",  # nnU-Net's progress bars, whatever the locale
                          timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net training failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    trained = folder / "results" / DATASET_NAME / "nnUNetTrainerTiny__nnUNetPlans__3d_fullres"
    if not (trained / "fold_0" / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"nnU-Net wrote no checkpoint in {trained}:\n{done.stdout[-3000:]}")
    return trained


if __name__ == "__main__":
    print(build_nnunet_results(Path(sys.argv[1])))
