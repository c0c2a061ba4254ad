"""The three demo models: what each is, what it is trained on, and its default training settings.

All three are the same kind of network — a small residual 3-D U-Net (Ronneberger et al., MICCAI 2015;
Çiçek et al., MICCAI 2016; MONAI's residual-unit variant after Kerfoot et al., 2018) with dropout —
trained the same way, as a lesion segmenter on random patches (:mod:`.segmentation`). The two
classifiers keep the dense lesion map and score the case by its most suspicious voxel
(``xai.output_pooling: "max"``, :mod:`XAIExplainLib.models.pooling`): a lesion of 0.1 % of the volume
is what decides the case, which global average pooling washes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .cards import MNI_NOTICE

__all__ = ["ModelRecipe", "RECIPES", "CAM_TARGET_LAYERS", "TRAINING_DOMAINS", "unet_def"]

#: Both kinds: the output convolution, whose lesion channel is the dense lesion-evidence map — for the
#: max-pooled classifiers the class activation map of a globally max-pooled network (Zhou et al., CVPR
#: 2016; Oquab et al., CVPR 2015), for the segmenter the evidence its outline is thresholded from,
#: sub-threshold spots included. Measured by ``slicer-xai bench``: on the segmenter this layer puts 79 % of
#: Grad-CAM's mass in the lesion (pointing game 0.80 on 5 cases) and passes the randomisation check,
#: while the decoder blocks (a quarter or half of the input resolution) put 0-1 %: with the channel weights
#: averaged over the whole volume (Seg-Grad-CAM, Vinogradova et al., AAAI 2020) their channels fire
#: wherever similar texture is.
CAM_TARGET_LAYERS = {"segmentation": "model.2", "classification": "model.2"}


def unet_def(width: int, dropout: float) -> dict[str, Any]:
    """``network_def`` of ``inference.json``: plain literals for ``monai.networks.nets.UNet``.

    Batch normalisation rather than MONAI's default instance normalisation: the network is trained on
    patches but run on the whole volume, and batch-norm running statistics do not depend on the field
    of view. Dropout makes Monte-Carlo dropout (Gal & Ghahramani, ICML 2016) meaningful.
    """
    return {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [width, 2 * width, 4 * width, 8 * width],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "norm": "batch",
        "dropout": dropout,
    }


@dataclass(frozen=True)
class ModelRecipe:
    """One demo bundle: its card, its data and its default training settings."""

    name: str
    kind: str  # case generator of XAIExplainLib.data
    task: str  # "classification" (max-pooled lesion map) or "segmentation"
    clinical_task: str
    modality: str
    class_names: tuple[str, str]
    intensity: Mapping[str, Any]
    description: str
    what_it_does: str
    data_description: str
    preprocessing: str
    limits: tuple[str, ...]
    references: tuple[str, ...]
    copyright_text: str
    value_range: tuple[float, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def xai_metadata(self, spacing: float, window: Sequence[int]) -> dict[str, Any]:
        """The ``xai`` key without the measured metrics and hash (the whole image is always seen,
        on a grid rounded up to a multiple of 16; ``window`` is the smallest grid and the sliding window)."""
        xai: dict[str, Any] = {
            "task": self.task,
            "clinical_tasks": [self.clinical_task],
            "modality": self.modality,
            "class_names": list(self.class_names),
            "positive_class": 1,
            "cam_target_layer": CAM_TARGET_LAYERS[self.task],
            "input": {"spacing_mm": [spacing] * 3, "orientation": "RAS", "size": list(window), "divisible_by": 16},
            "intensity": dict(self.intensity),
            "output_activation": "softmax",
        }
        if self.task == "classification":
            xai["output_pooling"] = "max"
        xai["domain"] = TRAINING_DOMAINS[self.kind]
        return xai


#: The input domain each kind of case was trained on (the model card's ``xai.domain``): the spacing the
#: generator draws, and the 1st-99th percentile envelope of its intensities over 8 of its cases (seed 5).
TRAINING_DOMAINS = {
    "brain-mri": {
        "spacing_mm": {"min": [1.8, 1.8, 2.0], "max": [2.2, 2.2, 3.0]},
        "intensity_range": [0, 1500],
        "source": "the training generator: spacing as it draws it (XAIExplainLib.data.brain: 1.8-2.2 mm in-plane, "
                  "2-3 mm slices); intensities: the 1st-99th percentile envelope of 8 of its cases",
    },
    "chest-ct": {
        "spacing_mm": {"min": [2.0, 2.0, 3.0], "max": [2.5, 2.5, 5.0]},
        "intensity_range": [-1024, 550],
        "source": "the training generator: spacing as it draws it (XAIExplainLib.data.chest: 2.0-2.5 mm in-plane, "
                  "3-5 mm slices); intensities: the 1st-99th percentile envelope of 8 of its cases",
    },
}

_BRAIN_LIMITS = (
    "Trained only on synthetic skull-stripped T1 volumes built from one template (MNI152 2009a); real scans, "
    "other sequences and skull-on images are out of distribution.",
    "Lesions under about 8 mm and subtle (low-contrast) lesions are the likeliest misses; non-enhancing "
    "(T1-dark) lesions were never shown to it.",
    "Oedema halos are not part of the lesion class.",
)
_BRAIN_DATA = ("synthetic contrast-enhanced T1 brain cases, XAIExplainLib.data brain-mri (0-2 enhancing or "
               "ring-enhancing lesions, 5-25 mm; about 45 % without). ")
_BRAIN_PREPROCESSING = ("Linear resampling of the whole image onto RAS voxels of the model spacing (grid rounded up "
                        "to a multiple of 16), z-score over the brain (voxels above the image minimum).")
_UNET_REFERENCES = ("Ronneberger O. et al. U-Net. MICCAI 2015.",
                    "Gal Y., Ghahramani Z. Dropout as a Bayesian approximation. ICML 2016.")
_MAX_POOL_REFERENCE = "Oquab M. et al. Is object localization for free? CVPR 2015."
_FONOV = "Fonov V. et al. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 2011."
_BRAIN_DEFAULTS = {"spacing": 2.0, "window": [64, 64, 64], "epochs": 50, "n_train": 140, "seed": 10,
                   "patch": [32, 32, 32], "width": 16, "dropout": 0.1, "batch_size": 8, "patches_per_case": 4,
                   "lesion_bias": 0.7, "peak_weight": 1.0, "lr": 3e-3, "case_epochs": 1}

RECIPES: dict[str, ModelRecipe] = {
    recipe.name: recipe
    for recipe in (
        ModelRecipe(
            name="brain-lesion-classifier",
            kind="brain-mri",
            task="classification",
            clinical_task="brain-lesion-triage",
            modality="MR",
            class_names=("no lesion", "lesion"),
            intensity={"kind": "zscore", "nonzero": True},
            description="Says whether a skull-stripped T1 brain MRI contains a tumour-like focal lesion "
                        "(demo model trained on synthetic cases).",
            what_it_does="A residual 3-D U-Net scores every voxel of a T1 brain volume for lesion; the case's "
                         "probability of 'lesion' is that of its most suspicious voxel (global max pooling, added "
                         "by the engine from `xai.output_pooling`).",
            data_description=_BRAIN_DATA,
            preprocessing=_BRAIN_PREPROCESSING,
            limits=_BRAIN_LIMITS,
            references=(*_UNET_REFERENCES, _MAX_POOL_REFERENCE, _FONOV),
            copyright_text="Copyright (c) SlicerXAI contributors. " + MNI_NOTICE,
            # Starts from the segmenter and learns the case decision on other cases (seed 0).
            defaults={**_BRAIN_DEFAULTS, "seed": 0, "epochs": 0, "init": "brain-lesion-segmenter", "case_epochs": 3},
        ),
        ModelRecipe(
            name="brain-lesion-segmenter",
            kind="brain-mri",
            task="segmentation",
            clinical_task="brain-lesion-segmentation",
            modality="MR",
            class_names=("background", "lesion"),
            intensity={"kind": "zscore", "nonzero": True},
            description="Segments tumour-like focal lesions in a skull-stripped T1 brain MRI "
                        "(demo model trained on synthetic cases).",
            what_it_does="A residual 3-D U-Net labels each voxel of a T1 brain volume as background or lesion. "
                         "Dropout can be kept on at inference (MC dropout) to estimate uncertainty.",
            data_description=_BRAIN_DATA,
            preprocessing=_BRAIN_PREPROCESSING,
            limits=_BRAIN_LIMITS,
            references=(*_UNET_REFERENCES, _FONOV),
            copyright_text="Copyright (c) SlicerXAI contributors. " + MNI_NOTICE,
            # Centring patches on every lesion equally often did not help here (held-out Dice 0.62).
            defaults={**_BRAIN_DEFAULTS, "calibrate_outline": True},
        ),
        ModelRecipe(
            name="chest-nodule-classifier",
            kind="chest-ct",
            task="classification",
            clinical_task="lung-nodule-detection",
            modality="CT",
            class_names=("no nodule", "nodule"),
            intensity={"kind": "ct_window", "center": -600, "width": 1500},
            description="Says whether a chest CT contains a lung nodule (demo model trained on synthetic phantoms).",
            what_it_does="A residual 3-D U-Net scores every voxel of a chest CT in a lung window for nodule; the "
                         "case's probability of 'nodule' is that of its most suspicious voxel (global max pooling, "
                         "added by the engine from `xai.output_pooling`).",
            data_description="synthetic chest CT phantoms, XAIExplainLib.data chest-ct (0-3 nodules, 4-20 mm, "
                             "solid, part-solid or spiculated; about 45 % without). ",
            preprocessing="Linear resampling of the whole image onto RAS voxels of the model spacing (grid rounded "
                          "up to a multiple of 16), then the lung window: -1350..150 HU mapped to 0..1, clipped.",
            limits=(
                "Trained only on a procedural chest phantom (no patient data): real CT anatomy, motion, contrast "
                "media, emphysema, consolidation, atelectasis and scanner artefacts are out of distribution.",
                "Nodules under 10 mm are the likeliest misses: of the single nodules in 240 held-out cases it finds "
                "52 of 54 of 10 mm or more, 20 of 23 of 6-10 mm and 2 of 7 under 6 mm (on its 3 mm grid they are "
                "two voxels, and on 4-5 mm slices a faint dot like a vessel seen end-on); vessels seen end-on are "
                "the likeliest false alarms (its threshold is set to call at most 5 % of lesion-free validation cases "
                "positive).",
                "Only the lung window (-600 / 1500 HU) is seen by the network: bone and soft-tissue findings are "
                "ignored.",
            ),
            references=(*_UNET_REFERENCES, _MAX_POOL_REFERENCE,
                        "Segars W. P. et al. 4D XCAT phantom for multimodality imaging research. Med. Phys. 2010."),
            copyright_text="Copyright (c) SlicerXAI contributors.",
            value_range=(-1024, 3071),
            defaults={"spacing": 3.0, "window": [64, 64, 64], "epochs": 40, "n_train": 160, "seed": 20,
                      "patch": [32, 32, 32], "width": 16, "dropout": 0.1, "batch_size": 8, "patches_per_case": 4,
                      "lesion_bias": 0.7, "peak_weight": 1.0, "lr": 3e-3, "case_epochs": 2,
                      # Keeping sub-voxel nodules in the targets did not help here (held-out AUC 0.952 and
                      # 0.937 on seeds 1234 and 4242, against 0.955 and 0.947 without); centring patches
                      # on every nodule equally often did (0.985 and 0.960).
                      "keep_every_lesion": False, "balance_lesions": True,
                      # The case threshold as trained sat at specificity 1.00, sensitivity 0.87 (held out);
                      # chosen on validation cases for at most 5 % false positives instead.
                      "operating_point": True},
        ),
    )
}
