"""``slicer-xai viewer``: start the browser viewer and print its address."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from XAIExplainLib.errors import XAIInputError

__all__ = ["add_viewer_command", "free_port"]


def add_viewer_command(commands: Any) -> None:
    viewer = commands.add_parser("viewer", help="open the browser viewer (default: the bundled demo case)")
    viewer.add_argument("input", nargs="?", help="NIfTI, NRRD or MetaImage file, or a DICOM series folder")
    viewer.add_argument("--model", help="bundled model name or bundle folder (default: the demo case's model)")
    viewer.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    viewer.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    viewer.add_argument("--token", help="access token every browser must bring, on every address (default: a new "
                                        "random one; the SLICER_XAI_TOKEN environment variable also sets it)")
    viewer.add_argument("--trust-bundle", action="store_true",
                        help="allow --model's own code to run (TorchScript, bundle expressions): only for a model you trust")
    viewer.add_argument("--classroom", choices=("presenter", "per-student"), default="presenter",
                        help="presenter: everyone connected shares one scene and follows it (default); "
                             "per-student: each browser gets its own viewer process and scene")
    viewer.add_argument("--max-sessions", type=int, default=40, help="per-student: most viewers at once (default 40)")
    viewer.add_argument("--idle-timeout", type=int, default=0,
                        help="stop after this many seconds with no browser connected (0: never)")
    viewer.add_argument("--pacs", metavar="URL",
                        help="DICOMweb address of a PACS to offer under Open from PACS and Send results to PACS "
                             "(credentials: SLICER_XAI_PACS_USER/_PASSWORD, _TOKEN or --pacs-credentials)")
    viewer.add_argument("--pacs-credentials", metavar="FILE",
                        help='JSON file {"user": ..., "password": ...} or {"token": ...}, readable by you only')
    viewer.add_argument("--study", metavar="UID", help="--pacs: open this study (Study Instance UID) at start")
    viewer.add_argument("--at", metavar="R,A,S", help="put the slice views and cursor at this point (RAS mm; "
                                                     "write --at=R,A,S when R is negative)")
    viewer.add_argument("--audit", metavar="DIR", help="step through the flagged cases of a slicer-xai audit folder")
    viewer.set_defaults(handler=run_viewer)


def run_viewer(args: argparse.Namespace) -> int:
    import os

    from .security import TOKEN_ENV, install_token_check, new_token

    pacs = _pacs_client(args)  # a bad address, credentials file or --study is refused before the server starts
    if args.audit and not args.model:
        from .audit_cases import audit_model

        args.model = audit_model(args.audit)
    if args.input:
        from XAIExplainLib.imageio import read_image

        read_image(args.input)  # a bad file is refused before the server starts
    if args.model:
        from XAIExplainLib.models import read_model_spec, resolve_model_path

        read_model_spec(resolve_model_path(args.model))
    from .audit_cases import flagged_case_choices, parse_point

    at = parse_point(args.at)
    audit = flagged_case_choices(args.audit, pacs.url if pacs else None) if args.audit else None
    port = args.port or free_port(args.host)
    _check_port_free(args.host, port)
    # A token on every address, loopback included: any web page the user visits can reach 127.0.0.1.
    token = args.token or os.environ.pop(TOKEN_ENV, None) or new_token()
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{port}/?token={token}"
    if args.classroom == "per-student":
        from .launcher import Launcher, run_launcher

        run_launcher(Launcher(args.host, token, args.max_sessions, args.idle_timeout or 300, _student_args(args)),
                     port, url)
        return 0
    from .app import XAIViewerApp

    app = XAIViewerApp(case=args.input, model=args.model, trust_model=args.trust_bundle, pacs=pacs, at=at,
                       audit=audit, study=args.study)
    install_token_check(app.server, token)
    app.ctrl.on_server_ready.add(lambda **_: print(f"SlicerXAI viewer: open {url}  (Ctrl+C to stop)", flush=True))
    app.server.start(host=args.host, port=port, open_browser=False, show_connection_info=False,
                     timeout=args.idle_timeout)
    return 0


def _pacs_client(args: argparse.Namespace):
    if (args.pacs_credentials or args.study) and not args.pacs:
        raise XAIInputError(f"{'--pacs-credentials' if args.pacs_credentials else '--study'} needs --pacs URL.")
    if args.study and (args.input or args.audit):
        raise XAIInputError("Give one case to open: INPUT, --pacs with --study, or --audit DIR.")
    if not args.pacs:
        return None
    from XAIExplainLib.dicom.pacs import PacsClient, check_uid, pacs_credentials

    if args.study:
        check_uid(args.study, "--study")
    return PacsClient(args.pacs, pacs_credentials(args.pacs_credentials))


def _student_args(args: argparse.Namespace) -> list[str]:
    """What every student's own viewer is started with: the case, model and PACS the teacher gave."""
    words = ["--trust-bundle"] if args.trust_bundle else []
    for flag, value in (("--model", args.model), ("--pacs", args.pacs), ("--pacs-credentials", args.pacs_credentials),
                        ("--study", args.study), ("--at", args.at), ("--audit", args.audit)):
        if value:
            words.append(f"{flag}={value}")  # one word: a value starting with "-" stays a value
    return words + (["--", args.input] if args.input else [])


def free_port(host: str) -> int:
    """A port the system considers free on ``host`` now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise XAIInputError(f"Cannot listen on {host}:{port} ({error.strerror}); choose another --port.") from None
