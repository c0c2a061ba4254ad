"""Train one demo model and write its MONAI bundle.

Usage::

    python -m XAIExplainLib.training brain-lesion-classifier --out Resources/Models/brain-lesion-classifier

Cases are generated on the fly (:mod:`XAIExplainLib.data`) and fed through the engine's own
preprocessing; the network is trained as a lesion segmenter on random patches; held-out metrics are
measured on cases from a seed never used in training — through the engine's max-pooling head for the
classifiers — and recorded in the bundle's model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import monai

from ..models import load_model
from .calibration import (OperatingPoint, OutlineCalibration, choose_operating_offset, choose_outline_offset,
                          shift_lesion_log_odds)
from .cards import bundle_metadata, model_card_markdown
from .common import Stopwatch, display_path, environment, seed_everything, write_bundle
from .datasets import build_set
from .recipes import CAM_TARGET_LAYERS, RECIPES, ModelRecipe, unet_def
from .segmentation import evaluate_pooled_classifier, evaluate_segmenter, finetune_case_level, train_segmenter

__all__ = ["main"]

_METRIC_DEFINITIONS = {
    "segmentation": "Dice on the model grid between the arg-max prediction and the reference mask (linearly "
                    "resampled, >= 0.5); 'dice' is the mean over held-out cases with a lesion.",
    "classification": "ROC AUC of the case probability (the most suspicious voxel's) against 'has a lesion'; "
                      "sensitivity and specificity at probability 0.5.",
}


_LAYER_WORDS = {"segmentation": "the output convolution: the dense lesion evidence the outline is thresholded from",
                "classification": "the output convolution: the dense lesion score map that is max-pooled"}


def _parser(recipe: ModelRecipe) -> argparse.ArgumentParser:
    d = recipe.defaults
    parser = argparse.ArgumentParser(prog=f"python -m XAIExplainLib.training {recipe.name}",
                                     description=recipe.description)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--epochs", type=int, default=d["epochs"])
    parser.add_argument("--n-train", type=int, default=d["n_train"])
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the training cases and of torch")
    parser.add_argument("--n-eval", type=int, default=40, help="held-out cases measured for the model card")
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out cases (never trained on)")
    parser.add_argument("--spacing", type=float, default=d["spacing"], help="model grid spacing (mm)")
    parser.add_argument("--patch", type=int, nargs=3, default=d["patch"], help="training patch (x y z)")
    parser.add_argument("--window", type=int, nargs=3, default=d["window"],
                        help="smallest model grid / inference window recorded as xai.input.size (x y z)")
    parser.add_argument("--patches-per-case", type=int, default=d["patches_per_case"])
    parser.add_argument("--lesion-bias", type=float, default=d["lesion_bias"],
                        help="fraction of patches centred on a lesion voxel (cases with lesions)")
    parser.add_argument("--peak-weight", type=float, default=d.get("peak_weight", 0.0),
                        help="weight of the lesion-peak detection loss added to each patch's Dice + cross-entropy")
    parser.add_argument("--keep-every-lesion", action=argparse.BooleanOptionalAction,
                        default=d.get("keep_every_lesion", True),
                        help="training masks keep a lesion smaller than the model voxels as its centroid voxel")
    parser.add_argument("--balance-lesions", action=argparse.BooleanOptionalAction,
                        default=d.get("balance_lesions", False),
                        help="lesion-centred patches pick a lesion first (each equally often, whatever its size)")
    parser.add_argument("--small-nodule-fraction", type=float, default=d.get("small_nodule_fraction", 0.0),
                        help="chest CT: share of the training nodules drawn at 6-10 mm (held-out cases never are)")
    parser.add_argument("--every-axis", action=argparse.BooleanOptionalAction, default=d.get("every_axis", False),
                        help="patches flipped along every axis and turned in the axial plane (default: left-right "
                             "flips only)")
    parser.add_argument("--calibrate-outline", action=argparse.BooleanOptionalAction,
                        default=d.get("calibrate_outline", False),
                        help="segmenters: choose the lesion log-odds offset with the best training Dice (no new "
                             "false-positive case) and fold it into the output bias")
    parser.add_argument("--operating-point", action=argparse.BooleanOptionalAction,
                        default=d.get("operating_point", False),
                        help="classifiers: raise the lesion log-odds (folded into the output bias) as far as keeps "
                             "--max-false-positive-rate of the lesion-free validation cases called positive")
    parser.add_argument("--validation-seed", type=int, default=99,
                        help="seed of the validation cases the operating point is chosen on")
    parser.add_argument("--n-validation", type=int, default=60)
    parser.add_argument("--max-false-positive-rate", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=d["width"], help="channels of the first U-Net level")
    parser.add_argument("--dropout", type=float, default=d["dropout"])
    parser.add_argument("--batch-size", type=int, default=d["batch_size"])
    parser.add_argument("--lr", type=float, default=d["lr"])
    parser.add_argument("--case-epochs", type=int, default=d.get("case_epochs", 0),
                        help="epochs of whole-volume fine-tuning through the max-pooling head (classifiers)")
    parser.add_argument("--case-lr", type=float, default=d.get("case_lr", 3e-4))
    parser.add_argument("--init", default=d.get("init"),
                        help="start from the weights of this bundle (name or folder; same network); 'none' trains "
                             "from scratch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def _command(recipe: ModelRecipe, args: argparse.Namespace) -> str:
    """The command line that reproduces this training run (recorded in the model card)."""
    return (
        f"python -m XAIExplainLib.training {recipe.name} --out {display_path(args.out)} --epochs {args.epochs} "
        f"--n-train {args.n_train} --seed {args.seed} --n-eval {args.n_eval} --eval-seed {args.eval_seed} "
        f"--spacing {args.spacing:g} --patch {' '.join(map(str, args.patch))} "
        f"--window {' '.join(map(str, args.window))} --patches-per-case {args.patches_per_case} "
        f"--lesion-bias {args.lesion_bias:g} --peak-weight {args.peak_weight:g} "
        f"--{'' if args.keep_every_lesion else 'no-'}keep-every-lesion "
        f"--{'' if args.balance_lesions else 'no-'}balance-lesions "
        f"--{'' if args.every_axis else 'no-'}every-axis "
        + (f"--small-nodule-fraction {args.small_nodule_fraction:g} " if args.small_nodule_fraction else "")
        + f"--width {args.width} --dropout {args.dropout:g} "
        f"--batch-size {args.batch_size} --lr {args.lr:g} --case-epochs {args.case_epochs} --case-lr {args.case_lr:g}"
        + (f" --{'' if args.calibrate_outline else 'no-'}calibrate-outline" if recipe.task == "segmentation" else "")
        + (f" --operating-point --validation-seed {args.validation_seed} --n-validation {args.n_validation} "
           f"--max-false-positive-rate {args.max_false_positive_rate:g}" if args.operating_point else "")
        + (f" --init {args.init}" if args.init else "")
    )


def _training_story(args: argparse.Namespace, outline: Optional[OutlineCalibration] = None,
                    operating: Optional[OperatingPoint] = None) -> str:
    """How the weights were reached, in one sentence for the model card."""
    steps = []
    if args.init is not None:
        steps.append(f"started from the weights of `{args.init}`")
    if args.epochs:
        steps.append(f"{args.epochs} epochs on random {'x'.join(map(str, args.patch))} patches ({args.lesion_bias:.0%} of "
                     "those from lesion cases centred on a lesion"
                     + (", each lesion equally often" if args.balance_lesions else "") + "), "
                     + ("flips along every axis and axial turns" if args.every_axis else "left-right flips") + ", Dice + cross-entropy"
                     + (f" plus {args.peak_weight:g} x the lesion-peak loss" if args.peak_weight else "")
                     + ", AdamW with a one-cycle schedule")
    if args.case_epochs:
        steps.append(f"{args.case_epochs} epoch{'s' if args.case_epochs != 1 else ''} on whole volumes with the lesion-peak loss (cross-entropy pushing "
                     "every lesion's highest voxel up and the highest voxel outside the lesions down: the case score "
                     "of the max-pooling head) plus Dice + cross-entropy of the lesion map")
    if outline is not None:
        steps.append(f"the outline's decision threshold chosen on the training cases: lesion log-odds raised by "
                     f"{outline.offset:g} (training Dice {outline.mean_dice[0.0]:.2f} -> "
                     f"{outline.mean_dice[outline.offset]:.2f}, no lesion-free case gaining a false positive), "
                     "folded into the output bias")
    if operating is not None:
        (sensitivity, sensitivity_after), (alarms, alarms_after) = (operating.sensitivity_change,
                                                                    operating.false_positive_rate_change)
        steps.append(f"the case threshold chosen on {operating.n_cases} validation cases (seed "
                     f"{args.validation_seed}, never trained or tested on): lesion log-odds raised by "
                     f"{operating.offset:g}, the most that calls at most {args.max_false_positive_rate:.0%} of the "
                     f"lesion-free ones positive (validation sensitivity {sensitivity:.2f} -> {sensitivity_after:.2f}, "
                     f"false-positive rate {alarms:.2f} -> {alarms_after:.2f}), folded into the output bias")
    return "; then ".join(steps)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train the named model, measure it on held-out cases, write the bundle; returns the metrics."""
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("model", choices=sorted(RECIPES))
    known, rest = names.parse_known_args(argv)
    recipe = RECIPES[known.model]
    args = _parser(recipe).parse_args(rest)
    if str(args.init).lower() in ("none", ""):
        args.init = None
    if args.eval_seed == args.seed:
        raise SystemExit("--eval-seed must differ from --seed: held-out cases must never be trained on.")
    if args.operating_point and recipe.task != "classification":
        raise SystemExit("--operating-point is for classifiers (a segmenter's line is its outline: --calibrate-outline).")
    if args.operating_point and args.validation_seed in (args.seed, args.eval_seed):
        raise SystemExit("--validation-seed must differ from --seed and --eval-seed.")

    clock = Stopwatch()
    generator = seed_everything(args.seed, args.threads)
    xai = recipe.xai_metadata(args.spacing, args.window)
    train = build_set(recipe.kind, args.seed, args.n_train, xai, with_masks=True,
                      keep_every_lesion=args.keep_every_lesion, log=clock.say,
                      small_nodule_fraction=args.small_nodule_fraction)
    definition = unet_def(args.width, args.dropout)
    network = monai.networks.nets.UNet(**{k: v for k, v in definition.items() if k != "_target_"})
    init_seconds = 0.0
    if args.init is not None:
        start = load_model(args.init)  # checks the weights' hash; a max-pooling head is unwrapped below
        network.load_state_dict(getattr(start.network, "dense", start.network).state_dict())
        init_seconds = float(start.spec.metadata["xai"].get("model_card", {}).get("training_time_s", 0.0))
    losses = train_segmenter(network, train, args.epochs, args.patch, args.seed, generator, args.batch_size,
                             args.patches_per_case, args.lr, args.lesion_bias, args.peak_weight,
                             args.balance_lesions, args.every_axis, log=clock.say) if args.epochs else []
    if args.case_epochs:
        losses += finetune_case_level(network, train, args.case_epochs, args.seed, args.case_lr, log=clock.say)
    outline = None
    if args.calibrate_outline:
        if recipe.task != "segmentation":
            raise SystemExit("--calibrate-outline is for segmenters (a classifier's case score is its maximum).")
        outline = choose_outline_offset(network, train)
        shift_lesion_log_odds(network, outline.offset)
        clock.say(f"outline offset {outline.offset:g}: training Dice {outline.mean_dice[0.0]:.4f} -> "
                  f"{outline.mean_dice[outline.offset]:.4f}")
    operating = None
    if args.operating_point:
        validation = build_set(recipe.kind, args.validation_seed, args.n_validation, xai, log=clock.say)
        operating = choose_operating_offset(network, validation, args.max_false_positive_rate)
        shift_lesion_log_odds(network, operating.offset)
        clock.say(f"operating point: offset {operating.offset:g}, validation sensitivity "
                  "{:.3f} -> {:.3f}, false-positive rate {:.3f} -> {:.3f}".format(
                      *operating.sensitivity_change, *operating.false_positive_rate_change))
    train_seconds = clock.elapsed
    held_out = build_set(recipe.kind, args.eval_seed, args.n_eval, xai, with_masks=True, log=clock.say)
    if recipe.task == "segmentation":
        metrics = evaluate_segmenter(network, held_out)
    else:
        metrics = evaluate_pooled_classifier(network, held_out)
    metrics["seed"] = args.eval_seed
    clock.say(f"held-out: {metrics}")

    command = _command(recipe, args)
    training_data = (f"{args.n_train} {recipe.data_description}"
                     + (f"{args.small_nodule_fraction:.0%} of the nodules redrawn at 6-10 mm. " if args.small_nodule_fraction
                        else "") + f"Seed {args.seed}.")
    xai["model_card"] = {
        "training_data": training_data,
        "held_out_metrics": metrics,
        "metric_definition": _METRIC_DEFINITIONS[recipe.task],
        "known_limits": list(recipe.limits),
        "intended_use": "Research and teaching only — not for clinical use.",
        "training_command": command,
        "training_time_s": round(train_seconds, 1),
        "training_time_including_init_s": round(train_seconds + init_seconds, 1),
        "training_environment": environment(),
        "final_training_loss": round(losses[-1], 4) if losses else None,
    }
    if outline is not None:
        xai["model_card"]["outline_log_odds_offset"] = outline.offset
    if operating is not None:
        xai["model_card"]["operating_point"] = {
            "log_odds_offset": operating.offset,
            "validation_seed": args.validation_seed,
            "validation_cases": operating.n_cases,
            "max_false_positive_rate": args.max_false_positive_rate,
            "validation_sensitivity": list(operating.sensitivity_change),
            "validation_false_positive_rate": list(operating.false_positive_rate_change),
        }
    dense_shape = ["16*n", "16*n", "16*n"]
    metadata = bundle_metadata(
        name=recipe.name,
        description=recipe.description,
        modality=recipe.modality,
        spatial_shape=dense_shape,
        value_range=list(recipe.value_range),
        output_type="image" if recipe.task == "segmentation" else "probabilities",
        output_channels={str(i): name for i, name in enumerate(recipe.class_names)},
        output_shape=dense_shape,
        xai=xai,
        copyright_text=recipe.copyright_text,
        references=list(recipe.references),
    )
    card = model_card_markdown(
        recipe.name,
        {
            "What it does": f"{recipe.what_it_does} Network: 4 levels, {args.width}-{8 * args.width} channels, "
                            f"dropout {args.dropout:g}, on {args.spacing:g} mm voxels. Grad-CAM target layer: "
                            f"`{CAM_TARGET_LAYERS[recipe.task]}` ({_LAYER_WORDS[recipe.task]}).",
            "Intended use": "Research and teaching only — not for clinical use.",
            "Training data": training_data,
            "Preprocessing": recipe.preprocessing,
            "How it was trained": f"`{command}` — {_training_story(args, outline, operating)}; {train_seconds / 60:.1f} min on "
                                  f"{environment()}"
                                  + (f" ({(train_seconds + init_seconds) / 60:.1f} min with the training of the "
                                     f"starting weights)." if init_seconds else "."),
            "Known limits": "\n".join(f"- {item}" for item in recipe.limits),
            "Licence": recipe.copyright_text,
        },
        metrics,
    )
    write_bundle(args.out, definition, network, metadata, card)
    clock.say(f"bundle written to {args.out}")
    return metrics


if __name__ == "__main__":
    main()
