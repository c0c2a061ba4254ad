"""The page: a side panel with the XAIExplain controls, and Slicer's views filling the rest."""

from __future__ import annotations

from typing import Any

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

__all__ = ["build_ui"]

# The browser refuses a file over the limit before sending it; the server checks again.
_UPLOAD_GUARD = (
    "($event && [].concat($event)[0] && [].concat($event)[0].size > max_upload_mb * 1048576)"
    " ? (error = 'This file is larger than ' + max_upload_mb + ' MB; it was not uploaded.')"
    " : trigger('xai_upload', [$event])"
)


def _channel_upload_guard(index: int) -> str:
    """The size guard of the upload of input volume ``channel_inputs[index]``."""
    return _UPLOAD_GUARD.replace("trigger('xai_upload', [$event])",
                                 f"trigger('xai_channel_upload', [channel_inputs[{index}].number, $event])")


def build_ui(app: Any) -> SinglePageWithDrawerLayout:
    server = app.server
    server.controller.trigger("xai_upload")(app.on_upload)
    server.controller.trigger("xai_channel_upload")(app.on_channel_upload)
    with SinglePageWithDrawerLayout(server, theme=("'dark'",)) as layout:
        layout.title.set_text("SlicerXAI — explain the model on this case")
        layout.drawer.width = 380
        with layout.toolbar:
            v3.VSpacer()
            html.Div("Research and teaching only — not for clinical use", classes="text-caption mr-4 text-grey")

        with layout.drawer:
            with v3.VTabs(v_model=("panel",), density="compact", grow=True, id="panel-tabs"):
                v3.VTab("Explain", value="explain", id="tab-explain")
                v3.VTab("Robustness", value="robustness", id="tab-robustness")
                v3.VTab("Checks", value="checks", id="tab-checks")
            with v3.VContainer(classes="pa-3", fluid=True):
                with html.Div(v_show=("panel === 'explain'",)):
                    _explain_panel(app)
                with html.Div(v_show=("panel === 'robustness'",)):
                    _robustness_panel(app)
                with html.Div(v_show=("panel === 'checks'",)):
                    _checks_panel(app)
                _progress_and_errors(app)
            _pacs_dialog(app)
            with v3.VDialog(v_model=("plot_dialog",), max_width=1200):
                with v3.VCard():
                    html.Img(src=("plot_src",), style="width: 100%;", id="plot-image")
                    with v3.VCardActions():
                        v3.VSpacer()
                        v3.VBtn("Close", click="plot_dialog = false", id="plot-close")

        with layout.content:
            # The views fill what the app bar and the side panel leave of the window.
            with html.Div(style="position: relative; width: 100%; height: calc(100vh - 64px);", id="views"):
                app.layout_manager.initialize_layout_grid(layout)
    return layout


def _explain_panel(app: Any) -> None:
    with html.Div(v_show=("audit_cases.length",), id="audit-cases"):
        v3.VSelect(label="Flagged case of the audit (most serious first)", items=("audit_cases",),
                   v_model=("audit_case",), density="compact", hide_details=True, classes="mb-2", id="audit-select")
    v3.VSelect(label="Sample case", items=("cases",), v_model=("case_name",), density="compact",
               hide_details=True, classes="mb-2", id="case-select")
    v3.VFileInput(
        label="Open your own volume (NIfTI, NRRD, MHA, DICOM .zip)",
        accept=".nii,.gz,.nrrd,.mha,.zip",
        density="compact", hide_details=True, classes="mb-3", prepend_icon="mdi-upload",
        update_modelValue=_UPLOAD_GUARD, id="upload",
    )
    v3.VBtn("Open from PACS", v_show=("pacs_enabled",), click=app.list_pacs_studies, disabled=("running",),
            prepend_icon="mdi-server-network", variant="tonal", block=True, size="small", classes="mb-3",
            id="open-pacs")
    html.Div("Open from the PACS: {{ pacs_case }}", v_show=("from_pacs",), classes="text-caption mb-2 mt-n2",
             id="pacs-case")
    v3.VSelect(label="Clinical task", items=("tasks",), v_model=("task",), density="compact",
               hide_details=True, classes="mb-2", id="task-select")
    v3.VSelect(label="Model", items=("models",), v_model=("model",), density="compact",
               hide_details=True, classes="mb-2", id="model-select")
    # A multi-channel model's other input volumes (its card's channel order), after the case itself.
    for index in range(3):
        with html.Div(v_show=(f"channel_inputs.length > {index}",), classes="mb-2"):
            v3.VFileInput(
                label=(f"channel_inputs[{index}] ? channel_inputs[{index}].label : ''",),
                accept=".nii,.gz,.nrrd,.mha,.zip", density="compact", hide_details=True, prepend_icon="mdi-layers",
                update_modelValue=_channel_upload_guard(index), id=f"channel-upload-{index + 2}")
            html.Div(f"{{{{ channel_inputs[{index}] && channel_inputs[{index}].loaded ? 'Loaded: ' + "
                     f"channel_inputs[{index}].loaded : 'Needed before Run' }}}}",
                     classes="text-caption text-medium-emphasis ml-10", id=f"channel-status-{index + 2}")
    v3.VSelect(label="Explanation method", items=("methods",), v_model=("method",),
               density="compact", hide_details=True, classes="mb-2", id="method-select")
    html.Div("{{ method_hint }}", v_show=("method_hint",), classes="text-caption text-medium-emphasis mb-2",
             id="method-hint")
    v3.VSelect(label="Uncertainty", items=("uncertainty_choices",), v_model=("uncertainty",),
               density="compact", hide_details=True, classes="mb-2", id="uncertainty-select")
    v3.VSelect(label="Written for", items=("audiences",), v_model=("audience",),
               density="compact", hide_details=True, classes="mb-3", id="audience-select")
    _run_button("Run", app.run, "run")
    v3.VSelect(label="Explained structure", items=("structures",), v_model=("structure",), density="compact",
               hide_details=True, classes="mt-2", v_show=("structures.length > 1",), disabled=("running",),
               id="structure-select")

    with v3.VCard(v_show=("has_result",), variant="tonal", classes="my-3", id="result-card"):
        v3.VCardTitle("{{ prediction_text }}", classes="text-subtitle-1 text-wrap", id="prediction")
        v3.VChip("Review recommended", v_show=("review",), color="warning", size="small", classes="ml-4",
                 id="review-flag")
        v3.VCardText("{{ summary_text }}", id="summary", style="white-space: pre-line;")
        v3.VCardText("{{ ground_truth_text }}", v_show=("ground_truth_text",), classes="text-caption",
                     id="ground-truth")
        with v3.VCardActions():
            v3.VBtn("Make report", click=app.make_report, disabled=("running",), size="small", id="make-report")
            html.A("Download report", href=("report_href",), download=("report_name",), v_show=("report_href",),
                   classes="text-body-2 ml-2", id="download-report")
        with v3.VCardActions():
            v3.VBtn("Save as DICOM", click=app.save_dicom, disabled=("running",), size="small", id="save-dicom")
            v3.VBtn("Send results to PACS", click=app.send_to_pacs, v_show=("from_pacs",), disabled=("running",),
                    size="small", id="send-pacs")
            html.A("Download DICOM (.zip)", href=("dicom_href",), download=("dicom_name",), v_show=("dicom_href",),
                   classes="text-body-2 ml-2", id="download-dicom")
        v3.VCardText("{{ pacs_message }}", v_show=("pacs_message",), classes="text-caption text-green-lighten-2",
                     id="pacs-message")

    html.Div("Green outline: the reference lesion drawn when this case was made (ground truth).",
             v_show=("has_reference",), classes="text-caption text-green-lighten-2 mb-2")
    html.Div("Overlay opacity", classes="text-caption")
    v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, density="compact", hide_details=True,
               thumb_label=True, id="opacity")
    html.Div("Hide evidence below (fraction of the strongest)", classes="text-caption")
    v3.VSlider(v_model=("threshold",), min=0, max=0.95, step=0.05, density="compact",
               hide_details=True, thumb_label=True, id="threshold")


def _pacs_dialog(app: Any) -> None:
    """The PACS's studies (patient ID, date, modalities, description); the chosen one's image series opens."""
    with v3.VDialog(v_model=("pacs_dialog",), max_width=720):
        with v3.VCard(id="pacs-dialog"):
            v3.VCardTitle("Open a study from the PACS")
            v3.VCardSubtitle("Research and teaching only — results go back as new series marked "
                             "'research use - not for clinical use'.")
            with v3.VCardText(id="pacs-studies"):
                with v3.VRadioGroup(v_model=("pacs_study",), density="compact", hide_details=True):
                    v3.VRadio(v_for="study in pacs_studies", key=("study.value",), label=("study.title",),
                              value=("study.value",))
            with v3.VCardActions():
                v3.VSpacer()
                v3.VBtn("Cancel", click="pacs_dialog = false", id="pacs-cancel")
                v3.VBtn("Open", color="primary", click=app.open_pacs_study, disabled=("!pacs_study",),
                        id="pacs-open")


def _robustness_panel(app: Any) -> None:
    html.Div("Perturb this case as scanners and patients do (noise, blur, contrast, MRI artefacts, CT dose, "
             "slice thickness, small motions) at severities 1 to 5, re-run the model and the explanation, "
             "and see where each breaks.", classes="text-body-2 mb-3")
    _run_button("Run robustness sweep", lambda: app.run_check("robustness"), "run-robustness")
    _check_result("robustness")


def _checks_panel(app: Any) -> None:
    html.Div("Sanity check (Adebayo et al., 2018): randomise the model layer by layer; a trustworthy "
             "explanation must change.", classes="text-body-2 mb-2")
    _run_button("Run sanity check", lambda: app.run_check("sanity"), "run-sanity")
    _check_result("sanity")
    v3.VDivider(classes="my-3")
    html.Div("Faithfulness (Petsiuk et al., 2018): remove the voxels the explanation ranks first; the "
             "score must fall faster than when removing voxels at random.", classes="text-body-2 mb-2")
    _run_button("Run faithfulness test", lambda: app.run_check("faithfulness"), "run-faithfulness")
    _check_result("faithfulness")


def _run_button(label: str, action, element_id: str) -> None:
    with html.Div(classes="d-flex mb-2"):
        v3.VBtn(label, color="primary", click=action, disabled=("running",), block=True, id=element_id)


def _check_result(kind: str) -> None:
    with html.Div(v_show=(f"{kind}_png",), classes="mt-2", id=f"{kind}-result"):
        html.Img(src=(f"{kind}_png",), style="width: 100%; cursor: zoom-in;",
                 click=f"plot_src = {kind}_png; plot_dialog = true", id=f"{kind}-plot")
        html.Div("{{ line }}", v_for=f"line in {kind}_lines", classes="text-caption")


def _progress_and_errors(app: Any) -> None:
    v3.VBtn("Cancel", color="warning", click=app.cancel, v_if=("running",), block=True, classes="mb-2", id="cancel")
    v3.VProgressLinear(model_value=("progress",), v_show=("running",), height=6, color="primary")
    html.Div("{{ progress_text }}", v_show=("running",), classes="text-caption mb-2")
    v3.VAlert(text=("error",), v_show=("error",), type="error", density="compact", classes="my-2", id="error")
