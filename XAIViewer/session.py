"""One viewer session's case and results: what the browser asks for, done on an MRML scene.

Kept free of trame so that it can be tested on a bare slicer-core scene. Long work (the engine) runs
off the main thread through :meth:`ViewerSession.compute`; everything that touches the scene runs on
the thread that owns it (:meth:`load_case`, :meth:`apply`).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from XAIExplainLib import mrml
from XAIExplainLib.audiences import EVIDENCE_TOP_PERCENT, CaseFacts, build_case_facts, get_audience
from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.imageio import read_image, read_mask
from XAIExplainLib.models import LoadedModel, list_bundled_models, load_model, resources_dir
from XAIExplainLib.pipeline import CaseCache, ExplanationResult, explain_image
from XAIExplainLib.progress import CancelToken, ProgressCallback
from XAIExplainLib.tasks import get_task, task_for_model

from .checks import TrustChecks
from .dicom_exchange import DicomCase

__all__ = ["RunSettings", "ViewerSession", "sample_cases", "MAX_UPLOAD_BYTES", "UPLOAD_SUFFIXES"]

#: Uploads above this size are refused before they are written anywhere; a zip may not unpack to more.
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".zip")
#: Most files a zipped DICOM series may hold.
MAX_ZIP_MEMBERS = 5000


@dataclass
class RunSettings:
    model: str
    method: str = "gradcam"
    uncertainty: str = "none"
    samples: int = 8
    task: Optional[str] = None
    target: Optional[str] = None
    seed: int = 0
    #: Where the user put the cursor (RAS mm), if they moved it: a segmentation explains the structure there.
    point_ras: Optional[tuple] = None


@dataclass
class ViewerSession:
    """The scene of one viewer, the case loaded in it and the last result."""

    scene: object
    input_node: object = None
    case_name: str = ""
    result: Optional[ExplanationResult] = None
    settings: Optional[RunSettings] = None
    facts: Optional[CaseFacts] = None
    checks: TrustChecks = field(default_factory=TrustChecks)
    reference_mask: object = None
    nodes: Optional[mrml.ExplanationNodes] = None
    #: The case's forward pass, activations and maps, reused when only the method or the target changes.
    cache: CaseCache = field(default_factory=CaseCache)
    #: The model names the panel offers; a browser can ask for no other (and never for a path).
    allowed_models: Optional[set] = None
    #: The one model the person who started the viewer trusts to run its own code (``--trust-bundle``).
    trusted_model: Optional[str] = None
    #: A multi-channel model's input volumes after the first, by channel number (2, 3, …), with their names.
    channels: dict = field(default_factory=dict)
    _models: dict = field(default_factory=dict)
    #: The case's DICOM series (headers and UIDs) when it was opened from the PACS: what results reference.
    dicom_case: Optional[DicomCase] = None
    #: Where the viewer itself last put the cursor (a case's centre, an evidence peak): not the user's choice.
    _placed_cursor: Optional[tuple] = None

    # --- case ---

    def load_case(self, path: str | os.PathLike, name: Optional[str] = None) -> object:
        """Read and validate ``path`` (engine rules), then replace the scene's case with it."""
        image = read_image(path)  # raises XAIInputError with one sentence for a bad file
        return self.show_image(image, name or _case_name(Path(path)))

    def show_image(self, image, name: str) -> object:
        """Replace the scene's case with ``image`` (already read and validated); on the scene's thread."""
        self.clear()
        self.case_name = name
        self.input_node = mrml.imageToVolumeNode(self.scene, image, self.case_name)
        self.input_node.CreateDefaultDisplayNodes()
        # Where the cursor is now is not the user's choice (it stays hidden until a result is shown).
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        self._placed_cursor = tuple(crosshair.GetCrosshairRAS()) if crosshair is not None else None
        return self.input_node

    def show_dicom_case(self, case: DicomCase) -> object:
        """Replace the scene's case with a series opened from the PACS, remembering where it came from."""
        node = self.show_image(case.image, case.name)
        self.dicom_case = case
        return node

    def show_reference(self, mask_path: str | os.PathLike) -> bool:
        """Outline a ground-truth lesion mask of the current case (bundled sample cases have one); whether it
        holds any lesion."""
        import SimpleITK as sitk

        self.reference_mask = read_mask(mask_path)
        mrml.showReferenceSegmentation(self.scene, self.input_node, self.reference_mask)
        return bool(sitk.GetArrayViewFromImage(self.reference_mask).any())

    def load_upload(self, filename: str, content: bytes) -> object:
        """Validate an uploaded file, then load it like any case (:meth:`read_upload` + :meth:`show_image`)."""
        return self.show_image(*self.read_upload(filename, content))

    @staticmethod
    def read_upload(filename: object, content: object) -> tuple:
        """Check and read a file a browser sent: ``(image, case name)``. No scene access (worker thread).

        Only single-file images (no detached headers) and zipped DICOM series are taken; messages name the
        upload by its own name, never by the temporary folder it is read from.
        """
        if isinstance(content, list) and all(isinstance(c, (bytes, bytearray)) for c in content):
            content = b"".join(content)  # large files arrive in chunks
        if not isinstance(filename, str) or not isinstance(content, (bytes, bytearray)):
            raise XAIInputError("The upload did not arrive as a file; choose the file again.")
        # Only the base name, made of safe characters, is kept: it names the case and the error messages.
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename.replace("\\", "/")).name)[:120] or "upload"
        lowered = safe_name.lower()
        if not lowered.endswith(UPLOAD_SUFFIXES):
            raise XAIInputError(f"{safe_name}: unsupported file type; upload NIfTI (.nii, .nii.gz), NRRD, MetaImage "
                                f"(.mha) or a DICOM series as a .zip.")
        if len(content) > MAX_UPLOAD_BYTES:
            raise XAIInputError(f"{safe_name} is {len(content) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
        if not content:
            raise XAIInputError(f"{safe_name} is empty.")
        with tempfile.TemporaryDirectory(prefix="slicer-xai-upload-") as folder:
            path = Path(folder) / safe_name
            path.write_bytes(content)
            if lowered.endswith(".zip"):  # a DICOM series, zipped by the browser user
                path = _unzip_series(path, Path(folder) / "series", safe_name)
            return read_image(path, name=safe_name, allow_detached=False), _case_name(Path(safe_name))

    def clear(self) -> None:
        """Remove the case and every result node made for it."""
        if self.input_node is not None and self.scene.IsNodePresent(self.input_node):
            for role in ("saliency", "uncertainty", "review", "segmentation", "reference"):
                while (node := mrml.findResultNode(self.scene, self.input_node, role)) is not None:
                    mrml.removeResultNode(self.scene, node)
            mrml.removeResultNode(self.scene, self.input_node)
        self.input_node, self.result, self.nodes, self.facts, self.reference_mask = None, None, None, None, None
        self.settings = None
        self.dicom_case = None
        self.channels.clear()
        self.checks.clear()
        self.cache.clear()

    # --- model and run ---

    def model(self, name: str) -> LoadedModel:
        """A model the panel offers, loaded once (its own code runs only if it is the trusted one)."""
        if self.allowed_models is not None and name not in self.allowed_models:
            raise XAIInputError("That model is not one this viewer offers; pick one from the list.")
        if name not in self._models:
            self._models[name] = load_model(name, trust_bundle=name == self.trusted_model)
        return self._models[name]

    def set_channel(self, number: int, image, name: str) -> None:
        """Input volume ``number`` (2, 3, …) of a multi-channel model for the loaded case (read by
        :meth:`read_upload`); the first is the case itself. Results of the case are kept until the next run."""
        if self.input_node is None:
            raise XAIInputError("Load the case (the model's first input) before its other input volumes.")
        self.channels[int(number)] = (image, name)

    def other_channels(self, model: LoadedModel) -> list:
        """The volumes ``model`` takes after the case, in its channel order; one line naming what is missing."""
        names = model.spec.channel_names
        missing = [f"{names[n - 1]} (input {n})" for n in range(2, model.spec.num_channels + 1) if n not in self.channels]
        if missing:
            raise XAIInputError(f"{model.spec.name} takes {model.spec.num_channels} volumes ({', '.join(names)}); "
                                f"upload {', '.join(missing)} as well.")
        return [self.channels[n][0] for n in range(2, model.spec.num_channels + 1)]

    def input_image(self):
        if self.input_node is None:
            raise XAIInputError("Load a case first.")
        return mrml.volumeNodeToImage(self.input_node)

    def compute(self, image, settings: RunSettings, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> tuple[ExplanationResult, Optional[CaseFacts]]:
        """The engine's work and the facts the audience writers word; safe in a worker thread (no MRML)."""
        model = self.model(settings.model)
        result = explain_image(image, model, method=settings.method, target=settings.target,
                               uncertainty=settings.uncertainty, samples=settings.samples, seed=settings.seed,
                               progress=progress, cancel=cancel, cache=self.cache,
                               other_channels=self.other_channels(model),
                               target_point_ras=settings.point_ras if settings.target is None else None)
        return result, self.describe(image, result, settings)

    def describe(self, image, result: ExplanationResult, settings: RunSettings) -> Optional[CaseFacts]:
        """The case's facts for the writers: result, clinical task, reference mask and the checks run so far."""
        spec = self.model(settings.model).spec
        try:  # the model's own task, else the generic one of its kind and modality (a bundle brought by its user)
            task = get_task(settings.task) if settings.task else task_for_model(spec)
        except XAIInputError:
            return None  # no task fits (the modality is not stated): maps without a written summary
        return build_case_facts(image, {settings.method: result}, task, spec, EVIDENCE_TOP_PERCENT,
                                lesion=self.reference_mask, trust=self.checks.evidence())

    def apply(self, result: ExplanationResult, facts: Optional[CaseFacts], settings: RunSettings, opacity: float,
              threshold: float) -> None:
        """Show ``result`` over the case (replacing the previous run's nodes)."""
        self.nodes = mrml.applyExplanationResult(self.scene, self.input_node, result, settings.method,
                                                 opacity=opacity, threshold=threshold)
        self.result, self.facts, self.settings = result, facts, settings
        self.jump_to(result.explanation["statistics"]["peak_ras_mm"])

    def ground_truth_line(self) -> str:
        """The shown map scored against the case's reference lesion (the bench's per-case metrics), or ""."""
        import SimpleITK as sitk

        from XAIRobustnessLib.localisation import localisation_scores

        if self.result is None or self.reference_mask is None:
            return ""
        saliency = self.result.saliency
        lesion = sitk.Resample(self.reference_mask, saliency, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        if not sitk.GetArrayViewFromImage(lesion).any():
            return ""
        scores = localisation_scores(saliency, lesion, self.input_image())
        return (f"Against the green reference: the peak is {'inside' if scores.pointing_hit else 'outside'} it; "
                f"{scores.mass_in_lesion:.0%} of the positive evidence lies in it (it is {scores.lesion_share:.1%} "
                f"of the body); AUPRC {scores.auprc:.2f} (chance {scores.lesion_share:.3f}); top-region IoU "
                f"{scores.top_k_iou:.2f}.")

    def jump_to(self, ras_mm) -> None:
        """Move every slice view through the point ``ras_mm`` and put the linked cursor (Slicer's
        crosshair, drawn in every view) on it; Shift + mouse move in a view moves it, as in Slicer."""
        import slicer

        r, a, s = (float(v) for v in ras_mm)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, r, a, s, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        crosshair = self.crosshair()
        if crosshair is not None:
            crosshair.SetCrosshairRAS(r, a, s)
            self._placed_cursor = (r, a, s)

    def user_cursor(self) -> Optional[tuple]:
        """The cursor's RAS position if the user moved it (Shift + mouse move) since the viewer last placed it."""
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return None
        here = tuple(float(v) for v in crosshair.GetCrosshairRAS())
        placed = self._placed_cursor
        return here if placed is None or max(abs(a - b) for a, b in zip(here, placed)) > 1e-3 else None

    def crosshair(self):
        """The scene's crosshair node, shown as a thin cursor linked across the views."""
        import slicer

        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None and crosshair.GetCrosshairMode() == slicer.vtkMRMLCrosshairNode.NoCrosshair:
            crosshair.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowSmallBasic)
            crosshair.SetCrosshairThickness(slicer.vtkMRMLCrosshairNode.Fine)
            crosshair.SetCrosshairBehavior(slicer.vtkMRMLCrosshairNode.OffsetJumpSlice)
        return crosshair

    def report_html(self, image, audience: str, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> str:
        """The per-case HTML report of the last run's settings, for ``audience`` (worker thread)."""
        from XAIExplainLib.report import build_report

        if self.settings is None:
            raise XAIInputError("Run an explanation first.")
        model = self.model(self.settings.model)
        task = self.settings.task or (model.spec.clinical_tasks[0] if model.spec.clinical_tasks else None)
        if task is None:
            raise XAIInputError("Pick a clinical task first.")
        uncertainty = self.settings.uncertainty if self.settings.uncertainty != "none" else None
        return build_report(image, model, task, audience, lesion=self.reference_mask, trust=self.checks.evidence(),
                            uncertainty=uncertainty, seed=self.settings.seed, input_name=self.case_name,
                            progress=progress, cancel=cancel).html

    def summary(self, audience: str) -> tuple[str, str, bool]:
        """(headline, text, review flag) of the last result, written for ``audience``."""
        if self.facts is None:
            return "", "", False
        writeup = get_audience(audience).write(self.facts)
        body = writeup.as_text().split("\n", 1)
        return writeup.headline, body[1].strip() if len(body) > 1 else "", writeup.review

    def set_opacity(self, opacity: float) -> None:
        if self.input_node is not None:
            mrml.setForegroundOpacity(self.scene, self.input_node, opacity)

    def set_threshold(self, threshold: float) -> None:
        if self.nodes is not None and self.nodes.saliency is not None:
            mrml.setSaliencyThreshold(self.nodes.saliency, threshold)


#: Which bundled model a sample case of each kind is shown with by default.
_DEFAULT_MODEL_FOR_KIND = {"brain-mri": "brain-lesion-classifier", "chest-ct": "chest-nodule-classifier"}


def sample_cases() -> list[dict]:
    """The bundled sample cases (``Resources/SampleData/samples.json``) with the model each suits."""
    import json

    folder = resources_dir() / "SampleData"
    index = folder / "samples.json"
    if not index.is_file():
        return []
    models = {m["name"] for m in list_bundled_models() if "error" not in m}
    cases = []
    for entry in json.loads(index.read_text(encoding="utf-8")):
        path = folder / f"{entry['name']}.nii.gz"
        if path.is_file():
            model = _DEFAULT_MODEL_FOR_KIND.get(entry.get("kind", ""))
            mask = folder / f"{entry['name']}_mask.nii.gz"
            cases.append({"name": entry["name"], "path": str(path), "description": entry.get("description", ""),
                          "model": model if model in models else None, "mask": str(mask) if mask.is_file() else None})
    return cases


def _unzip_series(archive: Path, folder: Path, name: str) -> Path:
    """Extract a zipped DICOM series safely: names inside the archive are never used as paths, and what is
    written is counted as it is decompressed (the sizes a zip declares may lie), never above the limit."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise XAIInputError(f"{name} holds {len(members)} files; a DICOM series zip may hold {MAX_ZIP_MEMBERS}.")
            if any(m.flag_bits & 0x1 for m in members):
                raise XAIInputError(f"{name} is encrypted; upload an unencrypted zip.")
            if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
                raise XAIInputError(f"{name} unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB.")
            folder.mkdir()
            written = 0
            for index, member in enumerate(members):
                # Flatten every entry to a numbered file.
                with bundle.open(member) as source, open(folder / f"{index:06d}.dcm", "wb") as target:
                    while block := source.read(1 << 20):
                        written += len(block)
                        if written > MAX_UPLOAD_BYTES:
                            raise XAIInputError(f"{name} unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB.")
                        target.write(block)
    except NotImplementedError:  # e.g. deflate64, bzip2 of an old variant, or another unsupported method
        raise XAIInputError(f"{name} uses a compression method that cannot be read; re-zip it (plain deflate).") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError, ValueError):
        raise XAIInputError(f"{name} is not a readable zip archive (corrupt or truncated).") from None
    return folder


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
