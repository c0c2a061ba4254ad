"""The browser viewer: Slicer slice and 3-D views (trame-slicer) with the XAIExplain side panel.

``slicer-xai viewer [INPUT] [--model M]`` starts it; with no input it opens the bundled demo case.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Optional

from trame.app import asynchronous, get_server
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from XAIExplainLib.errors import XAICancelled, XAIError
from XAIExplainLib.explainers import EXPLAINERS
from XAIExplainLib.audiences import AUDIENCES
from XAIExplainLib.models import list_bundled_models, read_model_spec, resolve_model_path
from XAIExplainLib.tasks import load_catalogue, methods_for_task, models_for_task
from XAIExplainLib.pipeline import predicted_structures
from XAIExplainLib.progress import CancelToken

from .dicom_exchange import open_pacs_study, results_zip, send_results, study_choices
from .security import StateGuard, limit_websocket_messages, number_in, one_of
from .session import MAX_UPLOAD_BYTES, RunSettings, ViewerSession, sample_cases
from .ui import build_ui

__all__ = ["XAIViewerApp", "DEFAULT_LAYOUT"]

logger = logging.getLogger(__name__)

DEFAULT_LAYOUT = "Quad View"
#: Input volumes a model may take in the viewer (BraTS-style models take four MRI sequences), as in Slicer.
MAX_INPUT_CHANNELS = 4
_UNCERTAINTY_CHOICES = [
    {"title": "None", "value": "none"},
    {"title": "Test-time augmentation", "value": "tta"},
    {"title": "MC dropout", "value": "mc-dropout"},
]


class XAIViewerApp:
    """One trame server, one Slicer scene and the XAIExplain workflow on it."""

    def __init__(self, server: Any = None, case: Optional[str] = None, model: Optional[str] = None,
                 trust_model: bool = False, pacs: Any = None, at: Optional[tuple] = None,
                 audit: Optional[list] = None, study: Optional[str] = None) -> None:
        # An upload is the largest message a browser sends (plus msgpack framing).
        limit_websocket_messages(MAX_UPLOAD_BYTES + 2**20)
        self.server = get_server(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(DEFAULT_LAYOUT)
        self.session = ViewerSession(self.slicer.scene, trusted_model=model if trust_model else None)
        self._cancel: Optional[CancelToken] = None
        self._busy = False
        self._initial_case = case
        self._initial_model = model
        #: The PACS the person who started the viewer named (``--pacs``): the browser cannot name another.
        self.pacs = pacs
        self._initial_study = study
        self._initial_point = at
        #: An audit's flagged cases (``--audit``), with their paths: the browser picks one by name only.
        self._audit = {entry["value"]: entry for entry in audit or []}

        self._init_state()
        self.session.allowed_models = {m["value"] for m in self.state.models} | ({model} if model else set())
        self._guard_state()
        self.ui = build_ui(self)
        self.ctrl.on_server_ready.add(self._on_ready)
        self.state.change("opacity")(self._on_opacity)
        self.state.change("threshold")(self._on_threshold)
        self.state.change("case_name")(self._on_case_selected)
        self.state.change("task")(self._on_task)
        self.state.change("audience")(self._show_summary)
        self.state.change("model", "method")(self._forget_checks)
        self.state.change("model")(self._forget_structures)
        self.state.change("model")(self._show_channel_inputs)
        self.state.change("structure")(self._on_structure)
        self.state.change("audit_case")(self._on_audit_case)
        self.state.change("task", "method")(self._show_method_hint)

    # --- state ---

    def _init_state(self) -> None:
        models = [m for m in list_bundled_models() if "error" not in m]
        cases = sample_cases()
        initial = {
            "trame__title": "SlicerXAI",
            "models": [{"title": m.get("title", m["name"]), "value": m["name"]} for m in models]
            + ([{"title": _model_title(self._initial_model), "value": self._initial_model}]
               if self._initial_model and self._initial_model not in [m["name"] for m in models] else []),
            "model": self._initial_model or (cases[0]["model"] if cases and cases[0]["model"] else (models[0]["name"] if models else None)),
            "methods": [{"title": cls.title, "value": key} for key, cls in EXPLAINERS.items()],
            "method": "gradcam",
            "uncertainty_choices": _UNCERTAINTY_CHOICES,
            "uncertainty": "none",
            "cases": [{"title": c["name"], "value": c["name"]} for c in cases],
            "case_name": None,
            "running": False,
            "progress": 0,
            "progress_text": "",
            "error": "",
            "prediction_text": "",
            "ground_truth_text": "",
            "summary_text": "",
            "opacity": 0.5,
            "threshold": 0.2,
            "max_upload_mb": MAX_UPLOAD_BYTES // 2**20,
            "has_result": False,
            "has_reference": False,
            "review": False,
            "tasks": [{"title": t.title, "value": t.id} for t in load_catalogue().tasks.values()],
            "task": None,
            "method_hint": "",
            "audiences": [{"title": a.title, "value": key} for key, a in AUDIENCES.items()],
            "audience": "radiologist",
            "panel": "explain",
            "plot_src": "",
            "plot_dialog": False,
            "robustness_png": "", "robustness_lines": [],
            "sanity_png": "", "sanity_lines": [],
            "faithfulness_png": "", "faithfulness_lines": [],
            "report_href": "",
            "report_name": "",
            # Segmentation models: the predicted structures the explanation can be about, and the one it is.
            "structures": [],
            "structure": None,
            # A multi-channel model's inputs after the first: [{"number", "label", "loaded"}], from its card.
            "channel_inputs": [],
            # DICOM: the PACS study list (as the PACS sent it), the case's origin, and the results as DICOM.
            "pacs_enabled": self.pacs is not None,
            "pacs_dialog": False,
            "pacs_studies": [],
            "pacs_study": None,
            "from_pacs": False,
            "pacs_case": "",
            "pacs_message": "",
            "dicom_href": "",
            "dicom_name": "",
            "audit_cases": [{"title": e["title"], "value": e["value"]} for e in self._audit.values()],
            "audit_case": None,
        }
        self.state.update(initial)
        # The keys this application owns, for the guard: trame's state.to_dict() is still empty at this point
        # (it fills when the server starts), which left every key open to the browser.
        self._owned_keys = set(initial)

    def _guard_state(self) -> None:
        """The browser may change only the panel's choices, and only to what the panel offers."""
        state = self.state
        checks = {
            "model": one_of(lambda: state.models),
            "method": one_of(lambda: state.methods),
            "uncertainty": one_of(lambda: state.uncertainty_choices),
            "case_name": lambda value: value is None or one_of(lambda: state.cases)(value),
            "task": lambda value: value is None or one_of(lambda: state.tasks)(value),
            "audience": one_of(lambda: state.audiences),
            "structure": lambda value: value is None or one_of(lambda: state.structures)(value),
            "panel": one_of(lambda: ["explain", "robustness", "checks"]),
            "opacity": number_in(0.0, 1.0),
            "threshold": number_in(0.0, 0.95),
            "plot_dialog": lambda value: isinstance(value, bool),
            "pacs_dialog": lambda value: isinstance(value, bool),
            "audit_case": lambda value: value is None or value in self._audit,
            "pacs_study": lambda value: value is None or one_of(lambda: state.pacs_studies)(value),
            "plot_src": lambda value: value == "" or value in [state[f"{k}_png"] for k in _CHECK_KINDS],
            # The page's own upload guard writes this one message (see ui._UPLOAD_GUARD).
            "error": lambda value: isinstance(value, str) and len(value) < 120
            and value.startswith("This file is larger than "),
        }
        StateGuard(self._owned_keys, checks).install(self.server)

    def _default_task(self) -> Optional[str]:
        try:
            tasks = read_model_spec(resolve_model_path(self.state.model)).clinical_tasks
        except XAIError:
            return None
        return tasks[0] if tasks else None

    def _on_ready(self, **_: Any) -> None:
        with self.state:
            self.state.task = self._default_task()
            self._show_channel_inputs(self.state.model)
        cases = {c["name"]: c for c in sample_cases()}
        if self._audit:
            with self.state:
                self.state.audit_case = next(iter(self._audit))
        elif self._initial_study:
            self._open_study(self._initial_study, at=self._initial_point)
        elif self._initial_case:
            self.load_path(self._initial_case, _mask_beside(self._initial_case), self._initial_point)
        elif cases:
            with self.state:
                self.state.case_name = next(iter(cases))

    # --- case loading ---

    def _on_case_selected(self, case_name: Optional[str], **_: Any) -> None:
        case = {c["name"]: c for c in sample_cases()}.get(case_name or "")
        if case is None or (self.session.input_node is not None and self.session.case_name == case_name):
            return
        if case["model"] and not self._initial_model:
            self.state.model = case["model"]
        self.load_path(case["path"], case["mask"])

    def _on_audit_case(self, audit_case: Optional[str], **_: Any) -> None:
        """A flagged case of the audit: open it with its reference mask, at its evidence peak."""
        entry = self._audit.get(audit_case or "")
        if entry is None:
            return
        if entry.get("study"):
            self._open_study(entry["study"], entry["mask"], entry["at"])
            return
        self.load_path(entry["image"], entry["mask"], entry["at"])

    def load_path(self, path: str, mask: Optional[str] = None, at: Optional[tuple] = None) -> None:
        """Load a case (and outline its reference lesion mask when there is one), at the point ``at``."""
        self._guarded(lambda: self._show_case_with_reference(self.session.load_case(path), mask, at))

    def on_upload(self, upload: Any = None) -> None:
        """A file from the browser (trame sends name, size and content): read and checked in a worker
        thread, so that a large or hostile upload never blocks the other users of the page."""
        if isinstance(upload, list):
            upload = upload[0] if upload else None
        if not isinstance(upload, dict):
            with self.state:
                self.state.error = "The upload did not arrive as a file; choose the file again."
            return
        name, content = upload.get("name"), upload.get("content")
        self._start(lambda _image, progress, cancel: self.session.read_upload(name, content),
                    lambda outcome: self._show_case(self.session.show_image(*outcome)), needs_case=False)

    def on_channel_upload(self, number: Any = None, upload: Any = None) -> None:
        """Input volume ``number`` (2…) of a multi-channel model, read and checked like the case (worker thread)."""
        if isinstance(upload, list):
            upload = upload[0] if upload else None
        choices = [entry["number"] for entry in self.state.channel_inputs]
        if number not in choices or not isinstance(upload, dict):
            with self.state:
                self.state.error = "The upload did not arrive as a file; choose the file again."
            return
        name, content = upload.get("name"), upload.get("content")

        def show(outcome) -> None:
            image, case_name = outcome
            self.session.set_channel(number, image, case_name)
            self._show_channel_inputs(self.state.model)

        self._start(lambda _image, progress, cancel: self.session.read_upload(name, content), show)

    # --- DICOM and PACS ---

    def list_pacs_studies(self) -> None:
        """Ask the PACS for its studies and offer them in a dialog."""
        if self.pacs is None:
            return
        self._start(lambda _image, progress, cancel: study_choices(self.pacs.studies()), self._offer_studies,
                    needs_case=False)

    def _offer_studies(self, choices: list) -> None:
        self.state.pacs_studies = choices
        self.state.pacs_study = choices[0]["value"] if choices else None
        self.state.pacs_dialog = bool(choices)
        if not choices:
            self.state.error = "The PACS holds no studies."

    def open_pacs_study(self) -> None:
        """Fetch the chosen study's image series and make it the case."""
        study = self.state.pacs_study
        if self.pacs is None or study not in [choice["value"] for choice in self.state.pacs_studies]:
            return
        self.state.pacs_dialog = False
        self._open_study(study)

    def _open_study(self, study_uid: str, mask: Optional[str] = None, at: Optional[tuple] = None) -> None:
        """Fetch a study's image series in a worker thread and make it the case (with its reference mask,
        at the point ``at``)."""

        def show(case) -> None:
            self._show_case_with_reference(self.session.show_dicom_case(case), mask, at)
            self.state.from_pacs, self.state.pacs_case = True, f"{case.name} ({case.image.GetSize()[2]} slices)"

        self._start(lambda _image, progress, cancel: open_pacs_study(self.pacs, study_uid), show, needs_case=False)

    def save_dicom(self) -> None:
        """The results as DICOM Parametric Maps, SEG and SR in a .zip to download."""
        result, case = self.session.result, self.session.dicom_case
        if result is None:
            return
        checks = self.session.facts.checks_run if self.session.facts is not None else []
        headers = case.headers if case is not None else None
        self._start(lambda image, progress, cancel: results_zip(result, image, headers, checks), self._offer_dicom)

    def _offer_dicom(self, archive: bytes) -> None:
        self.state.dicom_href = "data:application/zip;base64," + base64.b64encode(archive).decode()
        self.state.dicom_name = f"{self.session.case_name or 'case'}-xai-dicom.zip"

    def send_to_pacs(self) -> None:
        """Store the results into the study the case came from."""
        result, case = self.session.result, self.session.dicom_case
        if self.pacs is None or result is None or case is None:
            return
        checks = self.session.facts.checks_run if self.session.facts is not None else []

        def stored(count: int) -> None:
            self.state.pacs_message = f"Sent {count} result objects to the PACS (study of {case.name})."

        self._start(lambda _image, progress, cancel: send_results(self.pacs, result, case, checks), stored,
                    needs_case=False)

    def _show_channel_inputs(self, model: Optional[str] = None, **_: Any) -> None:
        """One upload field per input volume the model takes after the case, named as its card names them."""
        try:
            names = read_model_spec(resolve_model_path(model)).channel_names if model else ()
        except XAIError:
            names = ()
        loaded = self.session.channels
        self.state.channel_inputs = [
            {"number": n, "label": f"Input {n}: {names[n - 1]}",
             "loaded": loaded[n][1] if n in loaded else ""} for n in range(2, min(len(names), MAX_INPUT_CHANNELS) + 1)]

    def _show_case_with_reference(self, node: Any, mask: Optional[str], at: Optional[tuple] = None) -> None:
        """Show a new case, outlining its reference lesion mask where it has one (the legend says so only
        when the mask holds a lesion: a case without one has nothing to outline), at the point ``at``."""
        outlined = bool(mask) and self.session.show_reference(mask)
        self._show_case(node, has_reference=outlined)
        if at is not None:
            self.session.jump_to(at)

    def _show_case(self, node: Any, has_reference: bool = False) -> None:
        self.slicer.display_manager.show_volume(node, do_reset_views=True)
        with self.state:
            self.state.has_reference = has_reference
            self.state.error = ""
            self.state.report_href = ""
            self.state.from_pacs, self.state.pacs_message, self.state.dicom_href = False, "", ""
            for kind in _CHECK_KINDS:
                self.state[f"{kind}_png"], self.state[f"{kind}_lines"] = "", []
            self.state.prediction_text = ""
            self.state.summary_text = ""
            self.state.ground_truth_text = ""
            self.state.has_result = False
            self.state.structures, self.state.structure = [], None
            self._show_channel_inputs(self.state.model)  # a new case has none of its other volumes yet
            if self.session.case_name not in [c["value"] for c in self.state.cases]:
                self.state.case_name = None

    # --- long work: one at a time, in a worker thread, progress and Cancel on the panel ---

    def run(self, picked: bool = False) -> None:
        """Explain the case; the structure is the one just ``picked``, else the one under the cursor if the user
        moved it there, else the picker's (after a first run), else the largest predicted."""
        cursor = None if picked else self.session.user_cursor()
        settings = RunSettings(model=self.state.model, method=self.state.method, uncertainty=self.state.uncertainty,
                               task=self.state.task, target=None if cursor else self.state.structure,
                               point_ras=cursor)
        self._start(lambda image, progress, cancel: self.session.compute(image, settings, progress, cancel),
                    lambda outcome: self._show_result(*outcome, settings))

    def run_check(self, kind: str) -> None:
        """``robustness``, ``sanity`` or ``faithfulness`` of the current method on the current case."""
        model, method = self.state.model, self.state.method
        work = getattr(self.session.checks, kind)

        def check(image, progress, cancel):
            loaded = self.session.model(model)
            return work(image, loaded, method, progress, cancel, other_channels=self.session.other_channels(loaded))

        self._start(check, lambda outcome: self._show_check(kind, outcome))

    def make_report(self) -> None:
        audience = self.state.audience
        self._start(lambda image, progress, cancel: self.session.report_html(image, audience, progress, cancel),
                    self._offer_report)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            with self.state:
                self.state.progress_text = "Cancelling…"

    def _start(self, work, done, needs_case: bool = True) -> None:
        if self._busy:  # the server's own flag: the browser's copy of "running" is not trusted
            return
        self._busy = True
        asynchronous.create_task(self._background(work, done, needs_case))

    async def _background(self, work, done, needs_case: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._cancel = token = CancelToken()
        with self.state:
            self.state.running, self.state.progress, self.state.error = True, 0, ""
            self.state.progress_text = "Starting…"
        try:
            image = self.session.input_image() if needs_case else None  # scene access stays on this thread

            def progress(fraction: float, message: str) -> None:
                loop.call_soon_threadsafe(self._set_progress, fraction, message)

            outcome = await loop.run_in_executor(None, work, image, progress, token)
            with self.state:
                done(outcome)
        except XAICancelled:
            with self.state:
                self.state.error = "Cancelled; what was shown before is unchanged."
        except XAIError as error:
            with self.state:
                self.state.error = str(error)
        except Exception as error:  # keep the server alive for every other user of the page
            logger.exception("background work failed")
            with self.state:  # the details (paths among them) stay in the server's log
                self.state.error = f"Unexpected error ({type(error).__name__}); the server's log has the details."
        finally:
            self._cancel = None
            self._busy = False
            with self.state:
                self.state.running = False
                self.state.progress_text = ""

    def _show_result(self, result, facts, settings: RunSettings) -> None:
        self.session.apply(result, facts, settings, self.state.opacity, self.state.threshold)
        self.state.ground_truth_text = self.session.ground_truth_line()
        self._render_all()
        self._show_summary(self.state.audience)
        self.state.has_result = True
        self.state.report_href = ""
        self.state.dicom_href, self.state.pacs_message = "", ""
        self.state.structures = structure_choices(result)
        self.state.structure = result.explanation["target"]["class_name"] if self.state.structures else None

    def _on_structure(self, structure: Optional[str], **_: Any) -> None:
        """Another predicted structure picked: explain it (the case's forward pass is reused)."""
        result = self.session.result
        if structure and result is not None and structure != result.explanation["target"]["class_name"]:
            self.run(picked=True)

    def _forget_structures(self, **_: Any) -> None:
        self.state.structures, self.state.structure = [], None

    def _show_check(self, kind: str, outcome) -> None:
        self.state[f"{kind}_png"] = "data:image/png;base64," + base64.b64encode(outcome.png).decode()
        self.state[f"{kind}_lines"] = outcome.lines
        self.state.plot_src, self.state.plot_dialog = self.state[f"{kind}_png"], True
        if self.session.result is not None and self.session.settings is not None:
            # The checks change what the writers say (trust checks, review flag): re-word the result.
            self.session.facts = self.session.describe(self.session.input_image(), self.session.result,
                                                       self.session.settings)
            self._show_summary(self.state.audience)

    def _offer_report(self, html_text: str) -> None:
        self.state.report_href = "data:text/html;base64," + base64.b64encode(html_text.encode("utf-8")).decode()
        self.state.report_name = f"{self.session.case_name or 'case'}-{self.state.audience}-report.html"

    def _forget_checks(self, **_: Any) -> None:
        """Checks belong to one model and method: a new choice starts without them."""
        self.session.checks.clear()
        for kind in _CHECK_KINDS:
            self.state[f"{kind}_png"], self.state[f"{kind}_lines"] = "", []

    def _show_summary(self, audience: str, **_: Any) -> None:
        """The result in the words of ``audience`` (re-written, not re-computed, when it changes)."""
        headline, text, review = self.session.summary(audience)
        if not headline and self.session.result is not None:
            headline, text = _prediction_line(self.session.result), ""
        self.state.prediction_text, self.state.summary_text, self.state.review = headline, text, review

    def _on_task(self, task: Optional[str], **_: Any) -> None:
        """A task filters the models and methods offered, and picks its recommended method."""
        if not task:
            return
        models = [m for m in models_for_task(task)]
        self.state.models = [{"title": m.get("title", m["name"]), "value": m["name"]} for m in models]
        if models and self.state.model not in [m["name"] for m in models]:
            self.state.model = models[0]["name"]
        # The model's card says whether CAM methods can run (a target layer); the list entry does not.
        methods = methods_for_task(task, read_model_spec(resolve_model_path(self.state.model)) if self.state.model else None)
        self.state.methods = [{"title": EXPLAINERS[k].title, "value": k} for k in methods]
        self.state.method = methods[0] if methods else self.state.method

    def _show_method_hint(self, task: Optional[str], method: Optional[str], **_: Any) -> None:
        """Why the task recommends (or advises against) the chosen method, with the bench's measurement."""
        self.state.method_hint = load_catalogue().get(task).advice_text(method) if task and method else ""

    def _set_progress(self, fraction: float, message: str) -> None:
        with self.state:
            self.state.progress = int(round(100 * fraction))
            self.state.progress_text = message

    # --- display ---

    def _on_opacity(self, opacity: float, **_: Any) -> None:
        self.session.set_opacity(float(opacity))
        self._render_all()

    def _on_threshold(self, threshold: float, **_: Any) -> None:
        self.session.set_threshold(float(threshold))
        self._render_all()

    def _render_all(self) -> None:
        for view in self.slicer.view_manager.get_views():
            view.schedule_render()

    def _guarded(self, action) -> None:
        try:
            action()
        except XAIError as error:
            with self.state:
                self.state.error = str(error)


_CHECK_KINDS = ("robustness", "sanity", "faithfulness")


def _model_title(model: str) -> str:
    from pathlib import Path

    return Path(model.rstrip("/\\")).name


def _mask_beside(path: str) -> Optional[str]:
    """``case_mask.nii.gz`` next to ``case.nii.gz``, as the sample cases and ``data synth`` write them."""
    from pathlib import Path

    candidate = Path(path)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if candidate.name.endswith(suffix):
            mask = candidate.with_name(candidate.name[: -len(suffix)] + "_mask" + suffix)
            return str(mask) if mask.is_file() else None
    return None


def structure_choices(result) -> list[dict]:
    """The structure picker's entries (see :func:`XAIExplainLib.pipeline.predicted_structures`)."""
    return [{"title": title, "value": name} for name, title in predicted_structures(result)]


def _prediction_line(result) -> str:
    prediction = result.prediction
    line = f"{prediction['predicted_label']} — confidence {prediction['confidence']:.0%}"
    spread = result.uncertainty_info.get("predicted_class_std")
    if spread is not None:
        line += f" (± {spread:.0%} across {result.uncertainty_info['samples']} samples)"
    return line
