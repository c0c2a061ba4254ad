"""``slicer-xai robustness``, ``sanity``, ``faithfulness`` and ``bench``.

Registered on the main parser by :func:`add_robustness_commands`; they follow the command line's
conventions (:mod:`XAICommandLine.main`): progress on stderr, one-line errors (exit 2) for bad input,
nothing left in ``--out`` unless everything was written. Each writes a JSON report, a CSV table and
a PNG figure (bench: a CSV, a Markdown table, a PNG and a JSON summary).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Callable, Sequence

from XAIExplainLib.errors import XAIInputError

__all__ = ["add_robustness_commands"]

_METHODS = ("gradcam", "gradcampp", "gradient", "smoothgrad", "ig", "occlusion")


def add_robustness_commands(commands: argparse._SubParsersAction) -> None:
    """Add the robustness, sanity, faithfulness and bench subcommands to ``slicer-xai``'s subparsers."""
    from XAIRobustnessLib.perturbations import PERTURBATIONS

    robustness = commands.add_parser("robustness", help="perturb the image and see where prediction and explanation break")
    _common(robustness)
    robustness.add_argument("--perturbations", type=_names(PERTURBATIONS, "perturbation"),
                            help=f"comma-separated, from: {', '.join(PERTURBATIONS)} "
                                 f"(default: the 8 of the model's modality)")
    robustness.add_argument("--severities", type=_severities, default=(1, 2, 3, 4, 5),
                            help="comma-separated severities 0..5 (default 1,2,3,4,5; 0 is always included)")
    robustness.add_argument("--method", default="gradcam", choices=_METHODS)
    robustness.add_argument("--memory-budget-mb", type=float, default=2048,
                            help="memory for one batch of perturbed cases (default 2048)")
    robustness.set_defaults(handler=_robustness)

    sanity = commands.add_parser("sanity", help="model-parameter randomisation check of explanation methods")
    _common(sanity)
    sanity.add_argument("--method", type=_names(_METHODS, "method"), default=("gradcam",),
                        help=f"comma-separated, from: {', '.join(_METHODS)} (default gradcam)")
    sanity.add_argument("--max-steps", type=int, default=8, help="randomisation steps (default 8)")
    sanity.set_defaults(handler=_sanity)

    faithfulness = commands.add_parser("faithfulness", help="deletion / insertion curves against random orderings")
    _common(faithfulness)
    faithfulness.add_argument("--method", default="gradcam", choices=_METHODS)
    faithfulness.add_argument("--steps", type=int, default=20, help="curve steps (default 20)")
    faithfulness.add_argument("--random", type=int, default=3, help="random orderings averaged (default 3)")
    faithfulness.add_argument("--blur-mm", type=float, default=10.0,
                              help="Gaussian sigma of the 'removed' value, mm (default 10)")
    faithfulness.set_defaults(handler=_faithfulness)

    bench = commands.add_parser("bench", help="score explanation methods against ground-truth lesion masks")
    bench.add_argument("--model", required=True, help="bundled model name, bundle folder or TorchScript file")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--cases", help="folder of images, each with its '<name>_mask' beside it")
    source.add_argument("--synth", type=int, help="generate this many cases for the model's modality")
    bench.add_argument("--methods", type=_names(_METHODS, "method"), default=("gradcam", "gradient"),
                       help=f"comma-separated, from: {', '.join(_METHODS)} (default gradcam,gradient)")
    bench.add_argument("--sanity-cases", type=int, default=2,
                       help="cases on which the randomisation check runs (default 2)")
    bench.add_argument("--no-faithfulness", action="store_true", help="skip deletion / insertion")
    bench.add_argument("--no-stability", action="store_true", help="skip the mild-perturbation stability")
    bench.add_argument("--seed", type=int, default=0, help="seed of generated cases and of the methods")
    bench.add_argument("--trust-bundle", action="store_true",
                       help="allow the bundle's config to run Python code (only for bundles you trust)")
    bench.add_argument("--out", required=True, help="output folder")
    bench.set_defaults(handler=_bench)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="+", help="NIfTI, NRRD or MetaImage file, or a DICOM series folder; for a "
                                                 "multi-channel model one per channel, in the card's channel order")
    parser.add_argument("--model", required=True, help="bundled model name, bundle folder or TorchScript file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-bundle", action="store_true",
                        help="allow the bundle's config to run Python code (only for bundles you trust)")
    parser.add_argument("--out", required=True, help="output folder")


def _names(allowed: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or repr(text)}; "
                                             f"choose from {', '.join(allowed)}")
        return names
    return parse


def _severities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"severities must be numbers 0..5, not {text!r}") from None
    if not values or any(not 0 <= v <= 5 for v in values):
        raise argparse.ArgumentTypeError(f"severities must be numbers 0..5, not {text!r}")
    return values


def _load(args: argparse.Namespace):
    from XAIExplainLib.imageio import check_output_location, read_image
    from XAIExplainLib.models import load_model

    out = check_output_location(args.out)
    image, *others = [read_image(path) for path in args.input]
    model = load_model(args.model, trust_bundle=args.trust_bundle)
    return out, image, others, model


def _absolute(paths: Sequence[str]) -> list[str]:
    return [str(Path(path).absolute()) for path in paths]


def _run(work: Callable):
    from .progress import ProgressPrinter

    printer = ProgressPrinter()
    try:
        return work(printer)
    finally:
        printer.close()


def _write(out: Path, name: str, report: dict, rows: list[dict], plot: Callable[[Path], None]) -> None:
    from XAIExplainLib.imageio import staged_output_dir

    with staged_output_dir(out) as staging:
        (staging / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        with open(staging / f"{name}.csv", "w", newline="", encoding="utf-8") as stream:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        plot(staging / f"{name}.png")
    print(f"Results in {out.absolute()}/: {name}.json, {name}.csv, {name}.png")


def _robustness(args: argparse.Namespace) -> int:
    from XAIRobustnessLib.plots import plot_sweep
    from XAIRobustnessLib.sweep import robustness_sweep

    out, image, others, model = _load(args)
    sweep = _run(lambda printer: robustness_sweep(
        image, model, perturbations=args.perturbations, severities=args.severities, method=args.method,
        seed=args.seed, memory_budget_mb=args.memory_budget_mb, progress=printer, other_channels=others))
    title = f"{Path(args.input[0]).name} · {model.model_id}"
    report = {"input": str(Path(args.input[0]).absolute()), "inputs": _absolute(args.input), **sweep.to_json()}
    _write(out, "robustness", report, sweep.rows, lambda path: plot_sweep(sweep, path, title))
    for one in sweep.sweeps.values():
        print(("  " if one.summary["trustworthy_in_plausible_range"] else "! ") + one.summary["verdict"])
    total = sweep.timings_s["total"]
    print(f"{len(sweep.sweeps)} perturbations × {len(sweep.settings['severities']) - 1} severities in {total:.1f} s")
    return 0


def _sanity(args: argparse.Namespace) -> int:
    from XAIRobustnessLib.plots import plot_sanity
    from XAIRobustnessLib.sanity import sanity_checks

    if args.max_steps < 1:
        raise XAIInputError("--max-steps must be at least 1.")
    out, image, others, model = _load(args)
    results = _run(lambda printer: sanity_checks(image, model, args.method, seed=args.seed,
                                                 max_steps=args.max_steps, progress=printer,
                                                 other_channels=others))
    report = {"input": str(Path(args.input[0]).absolute()), "inputs": _absolute(args.input), "model": model.describe(),
              "seed": args.seed,
              "sanity": {"passed": all(r.passed for r in results.values()),
                         "spearman": max(r.final_spearman for r in results.values()),
                         "methods": {key: result.to_json() for key, result in results.items()}}}
    rows = [{"method": key, **{k: v for k, v in step.items() if k != "modules"}}
            for key, result in results.items() for step in result.steps]
    title = f"Randomisation check — {Path(args.input[0]).name} · {model.model_id}"
    _write(out, "sanity", report, rows, lambda path: plot_sanity(results, path, title))
    for result in results.values():
        print(result.verdict)
    return 0


def _faithfulness(args: argparse.Namespace) -> int:
    from XAIRobustnessLib.faithfulness import faithfulness_test
    from XAIRobustnessLib.plots import plot_faithfulness

    out, image, others, model = _load(args)
    result = _run(lambda printer: faithfulness_test(image, model, args.method, steps=args.steps, n_random=args.random,
                                                    blur_mm=args.blur_mm, seed=args.seed, progress=printer,
                                                    other_channels=others))
    report = {"input": str(Path(args.input[0]).absolute()), "inputs": _absolute(args.input), "model": model.describe(),
              **result.to_json()}
    columns = result.curve_columns()
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    title = f"Faithfulness — {Path(args.input[0]).name} · {model.model_id}"
    _write(out, "faithfulness", report, rows, lambda path: plot_faithfulness(result, path, title))
    print(result.verdict)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from XAIExplainLib.imageio import check_output_location, staged_output_dir
    from XAIExplainLib.models import load_model

    from XAIRobustnessLib.bench import folder_cases, run_bench, synthetic_cases, write_bench

    out = check_output_location(args.out)
    model = load_model(args.model, trust_bundle=args.trust_bundle)
    try:
        if args.cases:
            cases = folder_cases(Path(args.cases))
        else:
            kind = {"MR": "brain-mri", "CT": "chest-ct"}.get(model.spec.modality or "")
            if kind is None:
                raise XAIInputError(f"--synth makes brain MRI or chest CT cases; {model.model_id} is for "
                                    f"{model.spec.modality}: give --cases instead.")
            cases = synthetic_cases(kind, args.synth, args.seed)
        result = _run(lambda printer: run_bench(model, cases, args.methods, faithfulness=not args.no_faithfulness,
                                                stability=not args.no_stability, sanity_cases=args.sanity_cases,
                                                seed=args.seed, progress=printer))
    except ValueError as error:
        raise XAIInputError(str(error)) from None
    with staged_output_dir(out) as staging:
        write_bench(result, staging)
    print((out / "bench.md").read_text(encoding="utf-8"))
    print(f"Results in {out.absolute()}/: bench.md, bench.csv, bench.png, bench.json")
    return 0
