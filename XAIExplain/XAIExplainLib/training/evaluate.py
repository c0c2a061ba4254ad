"""Measure a model bundle on freshly generated held-out cases, and optionally record it in its card.

Usage::

    python -m XAIExplainLib.training.evaluate brain-lesion-segmenter --n-eval 120 --eval-seed 1234 777 --update-card

Training measures each model on 40 held-out cases; 40 cases, of which about half have a lesion, move a
mean Dice or an AUC by several points from one seed to the next (the demo segmenter: 0.68 to 0.78 on
four seeds of 60-120 cases). This measures a bundle on as many cases as asked from each of one or more
seeds never trained on, from the same generator, fed exactly as in training (segmenters: the arg-max
outline; classifiers: the engine's max-pooling head), with 95 % bootstrap intervals over all of them.
``--update-card`` writes the result into the bundle's ``held_out_metrics`` and prose model card with the
command that measured it; the weights are not touched.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..models import load_model
from .cards import METRICS_HEADING, metrics_markdown
from .common import Stopwatch, display_path, seed_everything
from .datasets import ModelGridSet, build_set
from .recipes import RECIPES
from .segmentation import evaluate_pooled_classifier, evaluate_segmenter

__all__ = ["main", "training_seeds"]


def training_seeds(card: dict[str, Any], depth: int = 4) -> set[int]:
    """The case seeds the bundle's weights have seen: its recorded training command's ``--seed`` (and
    ``--validation-seed``, whose cases chose its operating point) and, when it started from another bundle
    (``--init``), that bundle's, and so on."""
    command = card.get("training_command", "")
    seeds = {int(m.group(1)) for m in re.finditer(r"--(?:validation-)?seed (\d+)", command)}
    start = re.search(r"--init (\S+)", command)
    if start and depth > 0:
        try:
            seeds |= training_seeds(load_model(start.group(1)).spec.metadata["xai"].get("model_card", {}), depth - 1)
        except Exception as error:  # an unknown start cannot vouch for its seeds
            raise SystemExit(f"Cannot read the seeds of the starting bundle '{start.group(1)}': {error}") from error
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m XAIExplainLib.training.evaluate",
                                     description="Measure a demo model bundle on freshly generated held-out cases.")
    parser.add_argument("model", help="bundled model name or bundle folder")
    parser.add_argument("--n-eval", type=int, default=120, help="held-out cases to generate and measure per seed")
    parser.add_argument("--eval-seed", type=int, nargs="+", default=[1234],
                        help="seed(s) of the held-out cases (never trained on); their cases are pooled")
    parser.add_argument("--update-card", action="store_true",
                        help="record the metrics in the bundle's metadata and model card")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def _command(args: argparse.Namespace, name: str) -> str:
    return (f"python -m XAIExplainLib.training.evaluate {name} --n-eval {args.n_eval} "
            f"--eval-seed {' '.join(map(str, args.eval_seed))}{' --update-card' if args.update_card else ''}")


def _update_card(folder: Path, metrics: dict[str, Any], command: str) -> None:
    """Rewrite the held-out metrics in ``configs/metadata.json`` and ``docs/README.md`` (weights untouched)."""
    metadata_path = folder / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    card = metadata["xai"]["model_card"]
    card["held_out_metrics"] = metrics
    card["evaluation_command"] = command
    readme_path = folder / "docs" / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    prose = readme.split(METRICS_HEADING)[0].rstrip("\n")
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    readme_path.write_text(prose + "\n\n" + metrics_markdown(metrics, command), encoding="utf-8")


def _pooled(sets: list[ModelGridSet]) -> ModelGridSet:
    return ModelGridSet(images=[image for s in sets for image in s.images],
                        labels=np.concatenate([s.labels for s in sets]),
                        masks=[mask for s in sets for mask in s.masks],
                        infos=[info for s in sets for info in s.infos])


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Measure the bundle, print the metrics, record them when asked; returns the metrics."""
    args = _parser().parse_args(argv)
    if args.n_eval < 2:
        raise SystemExit("--n-eval must be at least 2.")
    clock = Stopwatch()
    seed_everything(args.eval_seed[0], args.threads)
    model = load_model(args.model)  # checks the weights' hash
    meta = model.spec.metadata
    xai = meta["xai"]
    name = meta.get("name", model.path.name)
    if name not in RECIPES:
        raise SystemExit(f"'{name}' is not a demo model of this project: no case generator is known for it.")
    seen = training_seeds(xai.get("model_card", {})) & set(args.eval_seed)
    if seen:
        raise SystemExit(f"--eval-seed {' '.join(map(str, sorted(seen)))}: this model was trained on those cases; "
                         "held-out cases must never be trained on.")
    recipe = RECIPES[name]
    # A classifier's masks only say where each lesion is (which ones it finds): keep the sub-voxel ones.
    held_out = _pooled([build_set(recipe.kind, seed, args.n_eval, xai, with_masks=True,
                                  keep_every_lesion=recipe.task == "classification", log=clock.say)
                        for seed in dict.fromkeys(args.eval_seed)])
    network = getattr(model.network, "dense", model.network)  # the classifiers' max-pooling head is re-added
    if recipe.task == "segmentation":
        metrics = evaluate_segmenter(network, held_out)
    else:
        metrics = evaluate_pooled_classifier(network, held_out)
    metrics["seeds"] = list(dict.fromkeys(args.eval_seed))
    clock.say(f"held-out: {json.dumps(metrics)}")
    if args.update_card:
        _update_card(model.path, metrics, _command(args, display_path(model.path) if args.model != name else name))
        clock.say(f"model card of {model.path} updated")
    return metrics


if __name__ == "__main__":
    main()
