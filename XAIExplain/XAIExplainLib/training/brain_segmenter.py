"""Train ``brain-lesion-segmenter``: a small residual 3-D U-Net (Ronneberger et al., MICCAI 2015; Çiçek et
al., MICCAI 2016; MONAI's residual-unit variant after Kerfoot et al., 2018) with dropout, so that
Monte-Carlo dropout (Gal & Ghahramani, ICML 2016) gives a meaningful uncertainty map.

Usage::

    python -m XAIExplainLib.training.brain_segmenter --out Resources/Models/brain-lesion-segmenter

The engine presents a segmentation model with the whole image on the model spacing (grid rounded up to
``divisible_by``); training uses the same grid through :func:`~XAIExplainLib.training.common.to_model_input`
and crops random training patches (``--patch``) from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import monai

from .cards import MNI_NOTICE, bundle_metadata, model_card_markdown
from .common import Stopwatch, display_path, environment, seed_everything, write_bundle
from .datasets import build_set
from .segmentation import evaluate_segmenter, train_segmenter

__all__ = ["network_def", "xai_metadata", "main"]

KIND = "brain-mri"


def network_def(width: int = 16, dropout: float = 0.1) -> dict[str, Any]:
    """The ``network_def`` of ``inference.json`` (plain literals for ``monai.networks.nets.UNet``).

    Batch normalisation, not MONAI's default instance normalisation: the network is trained on small
    patches but run on the whole volume, and instance statistics of a patch (mostly brain) differ from
    those of the whole volume (half background); batch-norm running statistics do not depend on the
    field of view.
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


def xai_metadata(spacing: float, window: Sequence[int]) -> dict[str, Any]:
    """The ``xai`` key without the measured metrics and hash.

    ``window`` is the smallest model grid (and the engine's sliding-window size); the whole image is
    always covered, on a grid rounded up to a multiple of 16.
    """
    return {
        "task": "segmentation",
        "clinical_tasks": ["brain-lesion-segmentation"],
        "modality": "MR",
        "class_names": ["background", "lesion"],
        "positive_class": 1,
        "cam_target_layer": "model.1.submodule.1.submodule.2",
        "input": {"spacing_mm": [spacing] * 3, "orientation": "RAS", "size": list(window), "divisible_by": 16},
        "intensity": {"kind": "zscore", "nonzero": True},
        "output_activation": "softmax",
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10, help="seed of the training cases and of torch")
    parser.add_argument("--n-eval", type=int, default=40, help="held-out cases measured for the model card")
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out cases (never trained on)")
    parser.add_argument("--spacing", type=float, default=3.0, help="model grid spacing (mm)")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32], help="training patch (x y z)")
    parser.add_argument("--window", type=int, nargs=3, default=[64, 64, 64],
                        help="smallest model grid / inference window recorded as xai.input.size (x y z)")
    parser.add_argument("--patches-per-case", type=int, default=4)
    parser.add_argument("--lesion-bias", type=float, default=2 / 3,
                        help="fraction of patches centred on a lesion voxel (cases with lesions)")
    parser.add_argument("--width", type=int, default=16, help="channels of the first U-Net level")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest when other jobs share the cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train, measure on held-out cases, write the bundle; returns the held-out metrics."""
    args = _parser().parse_args(argv)
    if args.eval_seed == args.seed:
        raise SystemExit("--eval-seed must differ from --seed: held-out cases must never be trained on.")
    clock = Stopwatch()
    generator = seed_everything(args.seed, args.threads)
    xai = xai_metadata(args.spacing, args.window)
    train = build_set(KIND, args.seed, args.n_train, xai, with_masks=True, log=clock.say)
    definition = network_def(args.width, args.dropout)
    network = monai.networks.nets.UNet(**{k: v for k, v in definition.items() if k != "_target_"})
    losses = train_segmenter(network, train, args.epochs, args.patch, args.seed, generator,
                             args.batch_size, args.patches_per_case, args.lr, args.lesion_bias, log=clock.say)
    train_seconds = clock.elapsed
    held_out = build_set(KIND, args.eval_seed, args.n_eval, xai, with_masks=True, log=clock.say)
    metrics = evaluate_segmenter(network, held_out)
    metrics["seed"] = args.eval_seed
    clock.say(f"held-out: {metrics}")

    command = (
        f"python -m XAIExplainLib.training.brain_segmenter --out {display_path(args.out)} --epochs {args.epochs} "
        f"--n-train {args.n_train} --seed {args.seed} --n-eval {args.n_eval} --eval-seed {args.eval_seed} "
        f"--spacing {args.spacing:g} --patch {' '.join(map(str, args.patch))} "
        f"--window {' '.join(map(str, args.window))} --patches-per-case {args.patches_per_case} "
        f"--lesion-bias {args.lesion_bias:.3g} --width {args.width} "
        f"--dropout {args.dropout:g}"
    )
    limits = [
        "Trained only on synthetic skull-stripped T1 volumes built from one template (MNI152 2009a); "
        "real scans are out of distribution.",
        f"Boundaries are only as fine as the {args.spacing:g} mm model grid; lesions under about 6 mm are "
        "often missed and subtle lesions under-segmented.",
        "Oedema halos are not part of the lesion class.",
    ]
    xai["model_card"] = {
        "training_data": f"{args.n_train} synthetic brain T1 cases, XAIExplainLib.data brain-mri, seed {args.seed}. "
                         + MNI_NOTICE,
        "held_out_metrics": metrics,
        "metric_definition": "Dice on the model grid between the arg-max prediction and the reference mask "
                             "(linearly resampled, >= 0.5); 'dice' is the mean over held-out cases with a lesion.",
        "known_limits": limits,
        "intended_use": "Research and teaching only — not for clinical use.",
        "training_command": command,
        "training_time_s": round(train_seconds, 1),
        "training_environment": environment(),
        "final_training_loss": round(losses[-1], 4),
    }
    metadata = bundle_metadata(
        name="brain-lesion-segmenter",
        description="Segments tumour-like focal lesions in a skull-stripped T1 brain MRI "
                    "(demo model trained on synthetic cases).",
        modality="MR",
        spatial_shape=["16*n", "16*n", "16*n"],
        value_range=[],
        output_type="image",
        output_channels={"0": "background", "1": "lesion"},
        output_shape=["16*n", "16*n", "16*n"],
        xai=xai,
        copyright_text="Copyright (c) SlicerXAI contributors. " + MNI_NOTICE,
        references=["Ronneberger O. et al. U-Net. MICCAI 2015.",
                    "Gal Y., Ghahramani Z. Dropout as a Bayesian approximation. ICML 2016."],
    )
    card = model_card_markdown(
        "brain-lesion-segmenter",
        {
            "What it does": f"A residual 3-D U-Net (4 levels, {args.width}-{8 * args.width} channels, dropout "
                            f"{args.dropout:g}) labels each {args.spacing:g} mm voxel of a T1 brain volume as "
                            "background or lesion. Dropout can be kept on at inference (MC dropout) to estimate "
                            "uncertainty. Grad-CAM target layer: `model.1.submodule.1.submodule.2` (decoder, half "
                            "resolution).",
            "Intended use": "Research and teaching only — not for clinical use.",
            "Training data": xai["model_card"]["training_data"],
            "Preprocessing": "Linear resampling of the whole image onto RAS voxels of the model spacing "
                             "(grid rounded up to a multiple of 16), z-score over voxels above the minimum.",
            "How it was trained": f"`{command}` — random {'x'.join(map(str, args.patch))} patches ({args.lesion_bias:.0%} of "
                                  f"those from lesion cases centred on a lesion), Dice + cross-entropy, AdamW one-cycle; {train_seconds / 60:.1f} min on "
                                  f"{environment()}.",
            "Known limits": "\n".join(f"- {item}" for item in limits),
            "Licence of the anatomy": MNI_NOTICE,
        },
        metrics,
    )
    write_bundle(args.out, definition, network, metadata, card)
    clock.say(f"bundle written to {args.out}")
    return metrics


if __name__ == "__main__":
    main()
