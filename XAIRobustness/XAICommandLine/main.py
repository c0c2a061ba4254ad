"""``slicer-xai``: the engine from a command line.

Subcommands: ``explain``, ``report``, ``models list``, ``models show``, ``data synth``, ``data to-dicom``. Bad input
gets one line on stderr and exit code 2, never a traceback, and nothing is left in the output folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from XAIExplainLib import __version__
from XAIExplainLib.errors import XAICancelled, XAIError, XAIInputError

from .progress import ProgressPrinter

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (staging folders) runs."""

_METHOD_CHOICES = ("gradcam", "gradcampp", "gradient", "smoothgrad", "ig", "occlusion")
_UNCERTAINTY_CHOICES = ("none", "mc-dropout", "tta", "ensemble")
_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``slicer-xai: error: …``), exit code 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="slicer-xai", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slicer-xai {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback for unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    explain = commands.add_parser("explain", help="explain a model's decision on one image")
    explain.add_argument("input", nargs="*", help="NIfTI, NRRD or MetaImage file, or a DICOM series folder; for a "
                                                  "multi-channel model one per channel, in the card's channel order "
                                                  "(none with --pacs)")
    explain.add_argument("--model", required=True, help="bundled model name, bundle folder or TorchScript file")
    explain.add_argument("--method", default="gradcam", choices=_METHOD_CHOICES)
    explain.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    explain.add_argument("--target-mask", help="segmentation models: explain the logits summed over this mask")
    explain.add_argument("--uncertainty", default="none", choices=_UNCERTAINTY_CHOICES)
    explain.add_argument("--samples", type=int, default=8, help="MC-dropout / TTA samples (default 8)")
    explain.add_argument("--ensemble-model", action="append", default=[], metavar="MODEL",
                         help="another model for --uncertainty ensemble (repeatable)")
    explain.add_argument("--occlusion-window", type=int, help="occlusion window, in model-grid voxels (default 8)")
    explain.add_argument("--occlusion-mode", choices=("exact", "approximate"),
                         help="occlusion: approximate (default: projective field thresholding and coarse-to-fine "
                              "drill-down, each checked against exact inference on sample windows and dropped if it "
                              "changes the map) or exact")
    explain.add_argument("--ig-steps", type=int, help="Integrated Gradients steps (default 32)")
    explain.add_argument("--smoothgrad-samples", type=int, help="SmoothGrad noisy samples (default 16)")
    explain.add_argument("--memory-budget-mb", type=float,
                         help="what one explanation batch may take (default 2048); sliding-window models are "
                              "explained one window at a time inside it")
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--format", choices=sorted([*_FORMATS, "dicom"]),
                         help="format of the results: maps as nii.gz (default), nrrd or mha, or dicom (Parametric "
                              "Maps, SEG and a TID 1500 report referencing the source series; default with --pacs)")
    explain.add_argument("--pacs", metavar="URL", help="DICOMweb base address of a PACS to fetch the study from "
                         "(credentials: SLICER_XAI_PACS_USER/_PASSWORD, _TOKEN or a credentials file)")
    explain.add_argument("--study", metavar="UID", help="--pacs: Study Instance UID to explain")
    explain.add_argument("--series", metavar="UID", help="--pacs: Series Instance UID (default: the study's largest "
                                                         "image series)")
    explain.add_argument("--store", action="store_true", help="--pacs: store the DICOM results back into the study")
    explain.add_argument("--pacs-credentials", metavar="FILE",
                         help='JSON file {"user": ..., "password": ...} or {"token": ...}, readable by you only')
    explain.add_argument("--trust-bundle", action="store_true",
                         help="allow the bundle's config to run Python code (only for bundles you trust)")
    explain.add_argument("--out", required=True, help="output folder")
    explain.set_defaults(handler=_explain)

    models = commands.add_parser("models", help="the bundled models")
    model_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_OneLineParser)
    listing = model_commands.add_parser("list", help="list bundled models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_models_list)
    show = model_commands.add_parser("show", help="show a model's card")
    show.add_argument("name", help="bundled model name, bundle folder or TorchScript file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_models_show)
    derived = model_commands.add_parser(
        "card", help="the card read from a bundle as published: each entry's source, what is missing, CAM layers")
    derived.add_argument("bundle", help="bundle folder (or bundled model name)")
    derived.add_argument("--trust-bundle", action="store_true",
                         help="allow the bundle's config to run Python code (only for bundles you trust)")
    derived.add_argument("--json", action="store_true", help="print only the card, as JSON")
    derived.set_defaults(handler=_models_card)

    data = commands.add_parser("data", help="synthetic cases with ground truth")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_OneLineParser)
    synth = data_commands.add_parser("synth", help="generate cases, lesion masks and a labels CSV")
    synth.add_argument("--kind", required=True, choices=("brain-mri", "chest-ct"))
    synth.add_argument("--n", type=int, default=10)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True)
    synth.set_defaults(handler=_data_synth)
    to_dicom = data_commands.add_parser("to-dicom", help="write an image as a DICOM MR series (e.g. to put it into a PACS)")
    to_dicom.add_argument("image", help="NIfTI, NRRD or MetaImage volume (or a DICOM folder)")
    to_dicom.add_argument("--out", required=True, help="new or empty folder for the series' files")
    to_dicom.add_argument("--patient-id", default="XAI-DEMO-0001", help="Patient ID to write (default: an anonymous ID)")
    to_dicom.add_argument("--description", default="Converted volume", help="Series Description (64 characters at most)")
    to_dicom.set_defaults(handler=_data_to_dicom)

    report = commands.add_parser("report", help="a self-contained HTML report of one case for one audience")
    report.add_argument("input", help="NIfTI, NRRD or MetaImage file, or a DICOM series folder")
    report.add_argument("--model", required=True, help="bundled model name, bundle folder or TorchScript file")
    report.add_argument("--task", help="clinical task id (default: the model's first clinical task, else the "
                                       "generic task of its kind and modality)")
    report.add_argument("--audience", default="radiologist", help="radiologist, researcher or teaching")
    report.add_argument("--mask", help="lesion mask to outline on the key slices (and to score the evidence)")
    report.add_argument("--robustness", metavar="PATH",
                        help="JSON file or folder written by slicer-xai robustness / sanity for this case")
    report.add_argument("--method", action="append", default=[], choices=_METHOD_CHOICES, dest="methods",
                        help="explanation method(s) to show instead of the audience's default (repeatable)")
    report.add_argument("--uncertainty", choices=("none", "mc-dropout", "tta"),
                        help="uncertainty method (default: the one the task recommends)")
    report.add_argument("--samples", type=int, default=8, help="MC-dropout / TTA samples (default 8)")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--trust-bundle", action="store_true",
                        help="allow the bundle's config to run Python code (only for bundles you trust)")
    report.add_argument("--out", required=True, help="output HTML file")
    report.set_defaults(handler=_report)

    try:  # the browser viewer is installed with the project, but not inside 3D Slicer
        from XAIViewer.cli import add_viewer_command
    except ImportError:
        pass
    else:
        add_viewer_command(commands)
    from .robustness import add_robustness_commands

    add_robustness_commands(commands)  # robustness, sanity, faithfulness (XAIRobustness)
    from .audit import add_audit_command

    add_audit_command(commands)  # a whole cohort on Dask
    return parser


#: What ends a run without an error of the engine's own: its one line and exit code.
_PLAIN_EXITS = {
    _Terminated: ("terminated; no results were kept.", EXIT_TERMINATED),
    KeyboardInterrupt: ("interrupted; no results were kept.", EXIT_CANCELLED),
    MemoryError: ("error: out of memory; try a smaller image or fewer samples.", EXIT_USAGE),
    RecursionError: ("error: the input nests too deeply to be read.", EXIT_USAGE),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.handler(args) or 0)
    except tuple(_PLAIN_EXITS) as error:
        message, code = next(value for kind, value in _PLAIN_EXITS.items() if isinstance(error, kind))
        print(f"slicer-xai: {message}", file=sys.stderr)
        return code
    except XAICancelled as error:
        print(f"slicer-xai: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except XAIError as error:
        print(f"slicer-xai: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a bug of ours: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"slicer-xai: internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
              f" (run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise _Terminated()


def _explain(args: argparse.Namespace) -> int:
    from XAIExplainLib.imageio import check_output_location, read_mask
    from XAIExplainLib.models import load_model

    out = check_output_location(args.out)  # before any work: an unwritable --out is found at once
    if args.samples < 2:
        raise XAIInputError("--samples must be at least 2.")
    output_format = _explain_format(args)
    target_mask = read_mask(args.target_mask) if args.target_mask else None
    model = load_model(args.model, trust_bundle=args.trust_bundle)
    ensemble = [load_model(name, trust_bundle=args.trust_bundle) for name in args.ensemble_model]
    if not args.pacs:
        return _explain_inputs(args, list(args.input), args.input, model, ensemble, target_mask, output_format, out)
    from XAIExplainLib.dicom.pacs import PacsClient, fetched_series, pacs_credentials

    client = PacsClient(args.pacs, pacs_credentials(args.pacs_credentials))
    with fetched_series(client, args.study, args.series) as (folder, series):
        return _explain_inputs(args, [str(folder)], [f"{client.url} study {args.study} series {series}"], model,
                               ensemble, target_mask, output_format, out, store=client if args.store else None)


def _explain_format(args: argparse.Namespace) -> str:
    """The output format, after the checks that tie --pacs, --study, --series, --store and INPUT together."""
    if args.pacs:
        if args.input:
            raise XAIInputError("Give either INPUT files or --pacs with --study, not both.")
        if not args.study:
            raise XAIInputError("--pacs needs --study UID (the study to explain).")
        if args.store and args.format not in (None, "dicom"):
            raise XAIInputError("--store sends DICOM results; leave out --format (or give --format dicom).")
        return args.format or "dicom"
    if not args.input:
        raise XAIInputError("Give an INPUT image (or a DICOM folder), or --pacs URL --study UID.")
    extra = [flag for flag, value in (("--study", args.study), ("--series", args.series), ("--store", args.store),
                                      ("--pacs-credentials", args.pacs_credentials)) if value]
    if extra:
        raise XAIInputError(f"{', '.join(extra)} need(s) --pacs URL.")
    return args.format or "nii.gz"


def _explain_inputs(args, paths: list, shown_inputs, model, ensemble, target_mask, output_format: str, out: Path,
                    store=None) -> int:
    """Explain the image(s) at ``paths`` and write the results into ``out`` (and, given ``store``, the PACS)."""
    from XAIExplainLib.imageio import read_image, staged_output_dir, write_image
    from XAIExplainLib.pipeline import explain_image

    image, *other_channels = [read_image(path) for path in paths]
    # Each option reaches only the method it belongs to.
    options = {"occlusion": (("window", args.occlusion_window), ("mode", args.occlusion_mode)),
               "ig": (("n_steps", args.ig_steps),), "smoothgrad": (("n_samples", args.smoothgrad_samples),)}
    params = {key: value for key, value in options.get(args.method, ()) if value is not None}
    if args.memory_budget_mb is not None:
        params["memory_budget_mb"] = args.memory_budget_mb
    printer = ProgressPrinter()
    try:
        result = explain_image(image, model, method=args.method, target=args.target, target_mask=target_mask,
                               uncertainty=args.uncertainty, samples=args.samples, ensemble=ensemble,
                               method_params=params or None, seed=args.seed, progress=printer,
                               other_channels=other_channels)
    finally:
        printer.close()
    inputs = [str(Path(path).absolute()) if not args.pacs else str(path) for path in shown_inputs]
    stored = None
    with staged_output_dir(out) as staging:
        if output_format == "dicom":
            files, stored = _write_dicom(result, image, Path(paths[0]), staging, store)
        else:
            files = _write_maps(result, staging, _FORMATS[output_format], write_image)
        report = {"input": inputs[0], **({"inputs": inputs} if len(inputs) > 1 else {}),
                  "files": {**files, "result": "result.json"}, **result.to_json()}
        (staging / "result.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_summary(result, out)
    if stored:
        print(f"Stored {stored[0]} result object(s) in study {stored[1]} on {store.url}")
    return 0


def _write_maps(result, staging: Path, suffix: str, write_image) -> dict:
    files = {}
    for role in ("saliency", "uncertainty", "segmentation"):
        if getattr(result, role) is not None:
            files[role] = f"{role}{suffix}"
            write_image(getattr(result, role), staging / files[role])
    return files


def _write_dicom(result, image, input_path: Path, staging: Path, store) -> tuple[dict, Optional[tuple]]:
    """The results as DICOM objects in ``dicom/``, referencing the input series; an input that is not a DICOM
    series is first written as one (``source/``) so that there is a series to reference."""
    import pydicom
    from XAIExplainLib.dicom import read_source_series, reference_series, write_dicom_results

    headers = read_source_series(input_path) if input_path.is_dir() else None
    source = reference_series(image, headers, staging / "source")
    files = {} if headers is not None else {"source": "source/"}
    export = write_dicom_results(result, source, staging / "dicom")
    files.update({role: f"dicom/{path.name}" for role, path in export.files.items()})
    if store is None:
        return files, None
    store.store([pydicom.dcmread(path) for path in export.files.values()], export.study_uid)
    return files, (len(export.files), export.study_uid)


def _print_summary(result, out: Path) -> None:
    prediction = result.prediction
    explanation = result.explanation
    peak = ", ".join(f"{v:.1f}" for v in explanation["statistics"]["peak_ras_mm"])
    print(f"Prediction: {prediction['predicted_label']} (confidence {prediction['confidence']:.2f})")
    print(f"Explanation: {explanation['method_name']} of {explanation['target']['description']}; "
          f"strongest evidence at RAS ({peak}) mm")
    info = result.uncertainty_info
    if info.get("method", "none") != "none":
        spread = f", spread of the predicted class probability {info['predicted_class_std']:.3f}" \
            if "predicted_class_std" in info else ""
        print(f"Uncertainty: {info['method']}{spread}")
    print(f"Results in {out.absolute()}/: " + ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))


def _models_list(args: argparse.Namespace) -> int:
    from XAIExplainLib.models import list_bundled_models

    models = list_bundled_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("No bundled models found.")
        return 0
    print(f"{'NAME':<28} {'TASK':<15} {'MODALITY':<9} {'CLINICAL TASKS':<30} CLASSES")
    for entry in models:
        if "error" in entry:
            print(f"{entry['name']:<28} (unreadable: {entry['error']})")
            continue
        print(f"{entry['name']:<28} {entry['task']:<15} {entry.get('modality') or '-':<9} "
              f"{', '.join(entry['clinical_tasks']) or '-':<30} {', '.join(entry['class_names'])}")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from XAIExplainLib.errors import XAIModelError
    from XAIExplainLib.models import bundle_weights_file, file_sha256, read_model_spec, resolve_model_path

    path = resolve_model_path(args.name)
    spec = read_model_spec(path)
    card = dict(spec.metadata.get("xai", {}))
    try:
        weights: Optional[Path] = bundle_weights_file(path)
    except XAIModelError:
        weights = None  # missing, or outside the bundle: nothing is hashed
    summary = {
        "name": spec.name,
        "path": str(path.absolute()),
        "version": spec.version,
        "description": spec.description,
        "task": spec.task,
        "modality": spec.modality,
        "clinical_tasks": list(spec.clinical_tasks),
        "class_names": list(spec.class_names),
        "input": card.get("input"),
        "intensity": card.get("intensity"),
        "cam_target_layer": spec.cam_target_layer,
        "weights_sha256_recorded": spec.weights_sha256,
        "weights_sha256_actual": file_sha256(weights) if weights is not None else None,
        "model_card": card.get("model_card", {}),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                print(f"  {sub_key}: {json.dumps(sub_value) if not isinstance(sub_value, str) else sub_value}")
        else:
            print(f"{key}: {', '.join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value}")
    return 0


def _models_card(args: argparse.Namespace) -> int:
    from XAIExplainLib.errors import XAIModelError
    from XAIExplainLib.models import derive_bundle_card, load_model, resolve_model_path, suggest_cam_layers

    from XAIExplainLib.bundle_card import DerivedCard
    from XAIExplainLib.nnunet_card import is_nnunet_folder, nnunet_card_metadata

    path = resolve_model_path(args.bundle)
    if not path.is_dir():
        raise XAIInputError(f"{path.name} is not a bundle folder: a TorchScript model's card must be written by hand.")
    nnunet = is_nnunet_folder(path)
    if nnunet:  # read from dataset.json and plans.json; nnU-Net's preprocessor does the rest
        metadata = nnunet_card_metadata(path)
        card = DerivedCard(xai=metadata["xai"], sources=dict(metadata["_xai_sources"]))
    else:
        card = derive_bundle_card(path)
    layers: list[str] = []
    problem = ""
    if not card.missing:
        try:
            model = load_model(path, trust_bundle=args.trust_bundle)
            size = model.spec.input.size or model.spec.input.patch_size or (32, 32, 32)
            layers = suggest_cam_layers(model.network, model.spec.task, model.spec.num_channels, size)
        except XAIModelError as error:
            problem = str(error)
    if layers and "cam_target_layer" not in card.xai:
        card.xai["cam_target_layer"] = layers[0]
        card.note("cam_target_layer", "suggested from the network's layers")
    if args.json:
        print(json.dumps(card.xai, indent=2))
        return 0
    print(f"Card of nnU-Net model {path.name} (read from dataset.json and plans.json):" if nnunet else
          f"Card of {path.name} (put it under \"xai\" in configs/metadata.json to change any entry):")
    print(json.dumps(card.xai, indent=2))
    print("Where each entry comes from:")
    for key, source in card.sources.items():
        print(f"  {key}: {source}")
    print("Missing: " + ("; ".join(card.missing) if card.missing else "nothing"))
    if layers:
        print("Grad-CAM layers (best first): " + ", ".join(layers))
    if problem:
        print(f"The network could not be built: {problem}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from XAIExplainLib.audiences import get_audience, read_trust_evidence
    from XAIExplainLib.imageio import read_image
    from XAIExplainLib.models import load_model
    from XAIExplainLib.report import build_report, write_report
    from XAIExplainLib.imageio import check_output_location
    from XAIExplainLib.tasks import get_task, task_for_model

    out = check_output_location(args.out, folder=False)
    if out.suffix.lower() not in (".html", ".htm"):
        raise XAIInputError(f"--out {out} must be an .html file.")
    if args.samples < 2:
        raise XAIInputError("--samples must be at least 2.")
    get_audience(args.audience)
    task = get_task(args.task) if args.task else None
    trust = read_trust_evidence(args.robustness)
    image = read_image(args.input)
    mask = read_image(args.mask) if args.mask else None
    model = load_model(args.model, trust_bundle=args.trust_bundle)
    if task is None:
        task = task_for_model(model.spec)
    printer = ProgressPrinter()
    try:
        report = build_report(image, model, task, args.audience, lesion=mask, trust=trust, uncertainty=args.uncertainty,
                              samples=args.samples, methods=args.methods or None, seed=args.seed,
                              input_name=Path(args.input).name, progress=printer)
    finally:
        printer.close()
    path = write_report(report.html, out)
    print(report.writeup.headline)
    if report.writeup.review:
        print("Review recommended: " + " ".join(report.facts.review_reasons))
    print(f"Report ({report.audience.title}) in {path}")
    return 0


def _data_to_dicom(args: argparse.Namespace) -> int:
    from XAIExplainLib.dicom import SeriesIdentity, write_image_series
    from XAIExplainLib.imageio import read_image

    if len(args.description) > 64 or len(args.patient_id) > 64:
        raise XAIInputError("--description and --patient-id are limited to 64 characters each (DICOM LO).")
    image = read_image(args.image)
    out = Path(args.out).absolute()
    identity = SeriesIdentity(patient_id=args.patient_id, series_description=args.description)
    files = write_image_series(image, out, identity)
    print(f"Wrote {len(files)} DICOM slice(s) of study {identity.study_uid} to {out}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from XAIExplainLib.data import synthesize

    if args.n < 1:
        raise XAIInputError("--n must be at least 1.")
    printer = ProgressPrinter()
    try:
        out = synthesize(args.kind, args.n, args.seed, args.out, progress=printer)
    finally:
        printer.close()
    print(f"Wrote {args.n} {args.kind} case(s) with lesion masks and labels.csv to {Path(out).absolute()}")
    return 0
