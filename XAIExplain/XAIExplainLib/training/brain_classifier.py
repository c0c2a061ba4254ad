"""Train ``brain-lesion-classifier``: a small 3-D ResNet (He et al., CVPR 2016; MONAI's 3-D variant after
Hara et al., CVPR 2018) that says whether a T1 brain volume contains a tumour-like lesion.

Usage::

    python -m XAIExplainLib.training.brain_classifier --out Resources/Models/brain-lesion-classifier

Cases come from ``XAIExplainLib.data.make_case("brain-mri", seed, i)`` and are fed through
:func:`~XAIExplainLib.training.common.to_model_input`, exactly as the engine feeds the product's
input. The held-out metrics in the bundle are measured on a seed never used in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import monai

from .cards import MNI_NOTICE, bundle_metadata, model_card_markdown
from .classifier import evaluate_classifier, train_classifier
from .common import Stopwatch, display_path, environment, seed_everything, write_bundle
from .datasets import build_set

__all__ = ["network_def", "xai_metadata", "main"]

KIND = "brain-mri"


def network_def(width: int = 8) -> dict[str, Any]:
    """The ``network_def`` of ``inference.json`` (plain literals for ``monai.networks.nets.ResNet``)."""
    return {
        "_target_": "monai.networks.nets.ResNet",
        "block": "basic",
        "layers": [1, 1, 1, 1],
        "block_inplanes": [width, 2 * width, 4 * width, 8 * width],
        "spatial_dims": 3,
        "n_input_channels": 1,
        "conv1_t_size": 3,
        "conv1_t_stride": 2,
        "no_max_pool": True,
        "num_classes": 2,
    }


def xai_metadata(spacing: float, size: Sequence[int]) -> dict[str, Any]:
    """The ``xai`` key without the measured metrics and hash."""
    return {
        "task": "classification",
        "clinical_tasks": ["brain-lesion-triage"],
        "modality": "MR",
        "class_names": ["no lesion", "lesion"],
        "positive_class": 1,
        "cam_target_layer": "layer4",
        "input": {"spacing_mm": [spacing] * 3, "orientation": "RAS", "size": list(size), "divisible_by": 16},
        "intensity": {"kind": "zscore", "nonzero": True},
        "output_activation": "softmax",
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="seed of the training cases and of torch")
    parser.add_argument("--n-eval", type=int, default=100, help="held-out cases measured for the model card")
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out cases (never trained on)")
    parser.add_argument("--spacing", type=float, default=3.0, help="model grid spacing (mm)")
    parser.add_argument("--size", type=int, nargs=3, default=[56, 68, 68], help="model grid size (x y z)")
    parser.add_argument("--width", type=int, default=8, help="channels of the first ResNet stage")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest when other jobs share the cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train, measure on held-out cases, write the bundle; returns the held-out metrics."""
    args = _parser().parse_args(argv)
    if args.eval_seed == args.seed:
        raise SystemExit("--eval-seed must differ from --seed: held-out cases must never be trained on.")
    clock = Stopwatch()
    generator = seed_everything(args.seed, args.threads)
    xai = xai_metadata(args.spacing, args.size)
    train = build_set(KIND, args.seed, args.n_train, xai, with_masks=True, twins=True, log=clock.say)
    definition = network_def(args.width)
    network = monai.networks.nets.ResNet(**{k: v for k, v in definition.items() if k != "_target_"})
    losses = train_classifier(network, train, args.epochs, generator, args.batch_size, args.lr, log=clock.say)
    train_seconds = clock.elapsed
    held_out = build_set(KIND, args.eval_seed, args.n_eval, xai, log=clock.say)
    metrics = evaluate_classifier(network, held_out)
    metrics["seed"] = args.eval_seed
    clock.say(f"held-out: {metrics}")

    command = (
        f"python -m XAIExplainLib.training.brain_classifier --out {display_path(args.out)} --epochs {args.epochs} "
        f"--n-train {args.n_train} --seed {args.seed} --n-eval {args.n_eval} --eval-seed {args.eval_seed} "
        f"--spacing {args.spacing:g} --size {' '.join(map(str, args.size))} --width {args.width}"
    )
    limits = [
        "Trained only on synthetic skull-stripped T1 volumes built from one template (MNI152 2009a); "
        "real scans (other contrasts, skull, pathology other than focal masses, post-operative changes) "
        "are out of distribution.",
        "Lesions smaller than about 6 mm and subtle (low-contrast) lesions are the likeliest misses at "
        f"the {args.spacing:g} mm model grid.",
        "The input is expected to be skull stripped with a zero background (z-score over voxels above "
        "the minimum).",
    ]
    xai["model_card"] = {
        "training_data": f"{args.n_train} synthetic brain T1 volumes from XAIExplainLib.data brain-mri, seed {args.seed}: "
                         f"{args.n_train // 2} cases, each as a twin pair with 1-2 lesions (5-25 mm) and without "
                         "(same anatomy and acquisition), so that only the lesion separates the classes. " + MNI_NOTICE,
        "held_out_metrics": metrics,
        "known_limits": limits,
        "intended_use": "Research and teaching only — not for clinical use.",
        "training_command": command,
        "training_time_s": round(train_seconds, 1),
        "training_environment": environment(),
        "final_training_loss": round(losses[-1], 4),
    }
    metadata = bundle_metadata(
        name="brain-lesion-classifier",
        description="Says whether a skull-stripped T1 brain MRI contains a tumour-like focal lesion "
                    "(demo model trained on synthetic cases).",
        modality="MR",
        spatial_shape=args.size,
        value_range=[],
        output_type="probabilities",
        output_channels={"0": "no lesion", "1": "lesion"},
        output_shape=[],
        xai=xai,
        copyright_text="Copyright (c) SlicerXAI contributors. " + MNI_NOTICE,
        references=["He K. et al. Deep Residual Learning for Image Recognition. CVPR 2016.",
                    "Fonov V. et al. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 2011."],
    )
    card = model_card_markdown(
        "brain-lesion-classifier",
        {
            "What it does": "A 3-D ResNet (one basic block per stage, "
                            f"{args.width}-{8 * args.width} channels) reads a T1 brain volume resampled to "
                            f"{args.spacing:g} mm RAS voxels ({' x '.join(map(str, args.size))}) and gives the "
                            "probability that it contains a tumour-like focal lesion. Grad-CAM target layer: `layer4`.",
            "Intended use": "Research and teaching only — not for clinical use. It exists so that the "
                            "explanations of SlicerXAI can be shown and tested on cases where the lesion's "
                            "position is known.",
            "Training data": xai["model_card"]["training_data"],
            "Preprocessing": "Linear resampling onto the model grid centred on the image centre (outside = image "
                             "minimum), then z-score normalisation over voxels above the minimum.",
            "How it was trained": f"`{command}` — AdamW with a one-cycle schedule, batch {args.batch_size}, "
                                  "deep supervision of layers 2-4 by the lesion masks (training-only heads), a 50x learning rate "
                                  "for the final linear layer, "
                                  f"left-right flips; {train_seconds / 60:.1f} min on {environment()}.",
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
