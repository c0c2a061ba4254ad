"""Train ``chest-nodule-classifier``: a small 3-D ResNet (He et al., CVPR 2016) that says whether a chest
CT contains a lung nodule (4–20 mm; solid, part-solid or spiculated).

Usage::

    python -m XAIExplainLib.training.chest_classifier --out Resources/Models/chest-nodule-classifier

Cases come from ``XAIExplainLib.data.make_case("chest-ct", seed, i)`` (a procedural Hounsfield-unit
phantom) and are fed through :func:`~XAIExplainLib.training.common.to_model_input` with a lung window,
exactly as the engine feeds the product's input. Held-out metrics are measured on a seed never used in
training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import monai

from .brain_classifier import network_def
from .cards import bundle_metadata, model_card_markdown
from .classifier import evaluate_classifier, train_classifier
from .common import Stopwatch, display_path, environment, seed_everything, write_bundle
from .datasets import build_set

__all__ = ["xai_metadata", "main"]

KIND = "chest-ct"


def xai_metadata(spacing: float, size: Sequence[int]) -> dict[str, Any]:
    """The ``xai`` key without the measured metrics and hash."""
    return {
        "task": "classification",
        "clinical_tasks": ["lung-nodule-detection"],
        "modality": "CT",
        "class_names": ["no nodule", "nodule"],
        "positive_class": 1,
        "cam_target_layer": "layer4",
        "input": {"spacing_mm": [spacing] * 3, "orientation": "RAS", "size": list(size), "divisible_by": 16},
        "intensity": {"kind": "ct_window", "center": -600, "width": 1500},
        "output_activation": "softmax",
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--seed", type=int, default=20, help="seed of the training cases and of torch")
    parser.add_argument("--n-eval", type=int, default=100, help="held-out cases measured for the model card")
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out cases (never trained on)")
    parser.add_argument("--spacing", type=float, default=4.0, help="model grid spacing (mm)")
    parser.add_argument("--size", type=int, nargs=3, default=[80, 64, 64], help="model grid size (x y z)")
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
        f"python -m XAIExplainLib.training.chest_classifier --out {display_path(args.out)} --epochs {args.epochs} "
        f"--n-train {args.n_train} --seed {args.seed} --n-eval {args.n_eval} --eval-seed {args.eval_seed} "
        f"--spacing {args.spacing:g} --size {' '.join(map(str, args.size))} --width {args.width}"
    )
    limits = [
        "Trained only on a procedural chest phantom (no patient data): real CT anatomy, motion, "
        "contrast media, emphysema, consolidation, atelectasis and scanner artefacts are out of distribution.",
        f"Nodules under about 6 mm are close to the {args.spacing:g} mm model grid and the likeliest misses; "
        "vessels seen end-on are the likeliest false alarms.",
        "Only the lung window (-600 / 1500 HU) is seen by the network: bone and soft-tissue findings are ignored.",
    ]
    xai["model_card"] = {
        "training_data": f"{args.n_train} synthetic chest CT phantoms from XAIExplainLib.data chest-ct, seed {args.seed}: "
                         f"{args.n_train // 2} cases, each as a twin pair with 1-3 nodules (4-20 mm) and without "
                         "(same anatomy and acquisition), so that only the nodule separates the classes.",
        "held_out_metrics": metrics,
        "known_limits": limits,
        "intended_use": "Research and teaching only — not for clinical use.",
        "training_command": command,
        "training_time_s": round(train_seconds, 1),
        "training_environment": environment(),
        "final_training_loss": round(losses[-1], 4),
    }
    metadata = bundle_metadata(
        name="chest-nodule-classifier",
        description="Says whether a chest CT contains a lung nodule (demo model trained on synthetic phantoms).",
        modality="CT",
        spatial_shape=args.size,
        value_range=[-1024, 3071],
        output_type="probabilities",
        output_channels={"0": "no nodule", "1": "nodule"},
        output_shape=[],
        xai=xai,
        copyright_text="Copyright (c) SlicerXAI contributors.",
        references=["He K. et al. Deep Residual Learning for Image Recognition. CVPR 2016.",
                    "Segars W. P. et al. 4D XCAT phantom for multimodality imaging research. Med. Phys. 2010."],
    )
    card = model_card_markdown(
        "chest-nodule-classifier",
        {
            "What it does": f"A 3-D ResNet (one basic block per stage, {args.width}-{8 * args.width} channels) "
                            f"reads a chest CT resampled to {args.spacing:g} mm RAS voxels "
                            f"({' x '.join(map(str, args.size))}) in a lung window and gives the probability that "
                            "it contains a lung nodule. Grad-CAM target layer: `layer4`.",
            "Intended use": "Research and teaching only — not for clinical use.",
            "Training data": xai["model_card"]["training_data"],
            "Preprocessing": "Linear resampling onto the model grid centred on the image centre (outside = image "
                             "minimum), then the lung window: -1350..150 HU mapped to 0..1, clipped.",
            "How it was trained": f"`{command}` — AdamW with a one-cycle schedule, batch {args.batch_size}, "
                                  "deep supervision of layers 2-4 by the lesion masks (training-only heads), a 50x learning rate "
                                  "for the final linear layer, "
                                  f"left-right flips; {train_seconds / 60:.1f} min on {environment()}.",
            "Known limits": "\n".join(f"- {item}" for item in limits),
        },
        metrics,
    )
    write_bundle(args.out, definition, network, metadata, card)
    clock.say(f"bundle written to {args.out}")
    return metrics


if __name__ == "__main__":
    main()
