"""``slicer-xai audit``: every case of a cohort explained and checked on Dask distributed.

Progress on stderr and one-line errors (exit 2), as every subcommand; the results file grows as cases
finish, so a stopped audit resumes with the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from XAIExplainLib.errors import XAIInputError

__all__ = ["add_audit_command"]

_METHODS = ("gradcam", "gradcampp", "gradient", "smoothgrad", "ig", "occlusion")


def add_audit_command(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="explain and check every case of a cohort (Dask distributed)")
    audit.add_argument("--model", required=True, help="bundled model name, bundle folder or nnU-Net model folder")
    cohort = audit.add_mutually_exclusive_group()
    cohort.add_argument("--cases", metavar="DIR", help="folder of images, with <name>_mask.<ext> references and "
                                                       "labels.csv (as `slicer-xai data synth` writes) where known")
    cohort.add_argument("--manifest", metavar="CSV", help="CSV with columns image (with --pacs: study, Study "
                                                          "Instance UIDs) and optional case, mask, label")
    audit.add_argument("--pacs", metavar="URL", help="DICOMweb base address of a PACS: audit every study on it (or "
                                                     "the --manifest's), each worker fetching its own")
    audit.add_argument("--pacs-credentials", metavar="FILE",
                       help="--pacs: JSON file (chmod 600) with user and password, or token; else the "
                            "SLICER_XAI_PACS_* environment variables (looked up on each worker)")
    audit.add_argument("--out", required=True, help="audit folder (new, or an earlier audit to resume)")
    audit.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    audit.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (tcp://host:8786) instead "
                                                              "of local workers")
    audit.add_argument("--worker-memory-gb", type=float, default=4.0,
                       help="memory limit of each local worker; one over it is restarted (default 4)")
    audit.add_argument("--method", choices=_METHODS, help="explanation method (default: the task's recommended)")
    audit.add_argument("--uncertainty", choices=("none", "tta", "mc-dropout"),
                       help="uncertainty estimate (default: the task's recommended)")
    audit.add_argument("--samples", type=int, default=8, help="TTA / MC-dropout samples (default 8)")
    audit.add_argument("--sanity-cases", type=int, default=1,
                       help="run the randomisation check on the first N cases (default 1)")
    audit.add_argument("--no-stability", action="store_true", help="skip the mild-perturbation stability sweep")
    audit.add_argument("--no-faithfulness", action="store_true", help="skip the deletion/insertion test")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--trust-bundle", action="store_true",
                       help="allow the bundle's config to run Python code (only for bundles you trust)")
    audit.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    from XAIExplainLib.models import read_model_spec, resolve_model_path
    from XAIRobustnessLib.audit import AuditSettings, ResultStore, run_audit
    from XAIRobustnessLib.audit.report import write_audit_report

    from .progress import ProgressPrinter

    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise XAIInputError('slicer-xai audit runs on Dask: pip install "dask[distributed]" first.')
    if args.samples < 2:
        raise XAIInputError("--samples must be at least 2.")
    if args.sanity_cases < 0:
        raise XAIInputError("--sanity-cases must be 0 or more.")
    read_model_spec(resolve_model_path(args.model))  # an unknown or broken model is refused before any worker starts
    cases = _cohort(args)
    settings = AuditSettings(model=args.model, trust_bundle=args.trust_bundle, method=args.method,
                             uncertainty=args.uncertainty, samples=args.samples, seed=args.seed,
                             stability=not args.no_stability, faithfulness=not args.no_faithfulness,
                             sanity_cases=args.sanity_cases)
    already = ResultStore(args.out).done() & {case.name for case in cases}
    if already:
        print(f"Resuming the audit in {args.out}: {len(already)} of {len(cases)} cases already audited",
              file=sys.stderr, flush=True)
    printer = ProgressPrinter()
    try:
        rows = run_audit(cases, settings, args.out, workers=args.workers, scheduler=args.scheduler,
                         worker_memory_gb=args.worker_memory_gb, progress=printer,
                         on_dashboard=lambda link: print(f"Dask dashboard: {link}", file=sys.stderr, flush=True))
    finally:
        printer.close()
    report = write_audit_report(rows, settings.to_dict(), args.out)
    _print_summary(rows)
    print(f"Results in {args.out}: one line per case in cases.jsonl; report {report}")
    return 0


def _cohort(args: argparse.Namespace) -> list:
    from XAIRobustnessLib.audit import PacsSource, cases_from_folder, cases_from_manifest, cases_from_pacs

    if args.pacs_credentials and not args.pacs:
        raise XAIInputError("--pacs-credentials needs --pacs URL.")
    if args.pacs:
        if args.cases:
            raise XAIInputError("Give --cases DIR or --pacs URL, not both (a --manifest may list the PACS's studies).")
        return cases_from_pacs(PacsSource(args.pacs, args.pacs_credentials), args.manifest)
    if args.cases:
        return cases_from_folder(args.cases)
    if args.manifest:
        return cases_from_manifest(args.manifest)
    raise XAIInputError("Give the cohort: --cases DIR, --manifest CSV or --pacs URL.")


def _print_summary(rows: list[dict]) -> None:
    status = Counter(row.get("status") for row in rows)
    print(f"Audited {len(rows)} case(s): {status.get('ok', 0)} measured, {status.get('error', 0)} failed")
    labelled = [row for row in rows if "correct" in row]
    if labelled:
        print(f"Correct against the reference label: {sum(r['correct'] for r in labelled)} of {len(labelled)}")
    pointed = [row for row in rows if "loc_pointing_hit" in row]
    if pointed:
        print(f"Pointing game hits on cases with a lesion: {sum(r['loc_pointing_hit'] for r in pointed)} of {len(pointed)}")
    for row in rows:
        if row.get("status") == "error":
            print(f"  {row['case']}: {row['error']}")
