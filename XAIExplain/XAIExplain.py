import dataclasses
import enum
import functools
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated, Callable, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Engine and MRML glue (XAIExplainLib) are imported inside Logic methods: they need torch, MONAI and
# SimpleITK, which are installed on first use, never when Slicer loads the module. Only the data's location
# (standard library) and the background-job runner (standard library) are imported here.
from XAIExplainLib import resources
from XAIExplainLib.background import ProcessJob
from XAIExplainLib.bundle_card import derive_card, input_channel_names

#: The demo model bundles and the sample case, inside the engine package (installed with the module).
BUNDLED_MODELS_DIR = str(resources.bundled_models_dir())
SAMPLE_CASE_PATH = str(resources.sample_case_path())
SAMPLE_MODEL_NAME = "brain-lesion-classifier"
#: Input volumes a model may take (one per channel; BraTS-style models take four MRI sequences).
MAX_INPUT_CHANNELS = 4
#: The Slicer releases the extension supports: MONAI 1.6 and Captum 0.9 need Python 3.10 or later, which
#: Slicer ships from 5.10 (Python 3.12); Slicer 5.6 and 5.8 ship Python 3.9.
MINIMUM_SLICER_VERSION = "5.10"
MINIMUM_PYTHON_VERSION = (3, 10)
#: The torch builds the engine runs on: MONAI 1.6.1 needs 2.8 or later; 2.13.0 is the newest tested.
TORCH_REQUIREMENT = ">=2.8,<=2.13.0"
MINIMUM_TORCH_VERSION = (2, 8)
#: Everything else the engine needs (torch comes from the PyTorch extension, and is held at its version).
PYTHON_REQUIREMENTS = ["monai==1.6.1", "captum==0.9.0", "scipy>=1.11", "nibabel>=5", "einops>=0.8", "PyYAML>=6"]
#: What Save as DICOM needs besides the engine, installed only when it is first used (highdicom needs pydicom 3,
#: which may update the pydicom Slicer ships).
DICOM_REQUIREMENTS = ["highdicom==0.28.2"]


#
# XAIExplain
#


class XAIExplain(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XAI Explain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Explainability")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerXAI developers"]
        self.parent.helpText = _("""
Explain a deep-learning model's decision on the volume open in the viewer. Pick a model, the clinical
task and who will read the result; <b>Apply</b> runs the model and shows a saliency map over the image
(foreground layer of the slice views), optionally an uncertainty map with the regions to review
(label layer), and the prediction with a written summary.
See the <a href="https://github.com/SlicerXAI/SlicerXAI#readme">SlicerXAI documentation</a>, and
<a href="https://slicer.readthedocs.io/en/latest/user_guide/modules/volumes.html">Volumes</a> for
adjusting the displayed maps.
""")
        self.parent.acknowledgementText = _("""
Developed by the SlicerXAI contributors. Explanations are computed with
<a href="https://captum.ai">Captum</a> and <a href="https://monai.io">MONAI</a>; the module layout
follows 3D Slicer's scripted module template.
""")
        # The sample cases appear in the Sample Data module once the application has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add the bundled sample cases (``XAIExplainLib/Resources/SampleData/samples.json``) to Sample Data."""
    import SampleData

    iconPath = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons", "XAIExplain.png")
    for name, path in XAIExplainLogic.sampleCases():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="SlicerXAI", sampleName=name, thumbnailFileName=iconPath, uris=pathlib.Path(path).as_uri(),
            fileNames=os.path.basename(path), nodeNames=name, loadFileTypes="VolumeFile")


#
# Parameter choices (labels are what the user reads; values are what the engine takes)
#


class Audience(enum.Enum):
    RADIOLOGIST = "radiologist"
    RESEARCHER = "researcher"
    TEACHING = "teaching"

    def label(self):
        return {
            Audience.RADIOLOGIST: _("Radiologist"),
            Audience.RESEARCHER: _("Researcher"),
            Audience.TEACHING: _("Teaching / patient"),
        }[self]


class ExplanationMethod(enum.Enum):
    GRADCAM = "gradcam"
    GRADCAMPP = "gradcampp"
    GRADIENT = "gradient"
    SMOOTHGRAD = "smoothgrad"
    INTEGRATED_GRADIENTS = "ig"
    OCCLUSION = "occlusion"

    def label(self):
        return {
            ExplanationMethod.GRADCAM: _("Grad-CAM"),
            ExplanationMethod.GRADCAMPP: _("Grad-CAM++"),
            ExplanationMethod.GRADIENT: _("Gradient (saliency)"),
            ExplanationMethod.SMOOTHGRAD: _("SmoothGrad"),
            ExplanationMethod.INTEGRATED_GRADIENTS: _("Integrated Gradients"),
            ExplanationMethod.OCCLUSION: _("Occlusion"),
        }[self]


class UncertaintyMethod(enum.Enum):
    NONE = "none"
    MC_DROPOUT = "mc-dropout"
    TTA = "tta"

    def label(self):
        return {
            UncertaintyMethod.NONE: _("None"),
            UncertaintyMethod.MC_DROPOUT: _("Monte Carlo dropout"),
            UncertaintyMethod.TTA: _("Test-time augmentation"),
        }[self]


#
# XAIExplainParameterNode
#


@parameterNodeWrapper
class XAIExplainParameterNode:
    """The user's choices, saved with the scene.

    inputVolume - the volume to explain.
    model - bundled model name, or a model bundle folder / TorchScript file.
    trustModel - the user's word that the model's own code may run (TorchScript, bundle expressions).
    clinicalTask - id of a task in the clinical task catalogue (Resources/Tasks/tasks.json); empty: the
        model's first task. audience - who reads the result (radiologist, researcher, teaching).
    method - the explanation method.
    target - class to explain (name or index); empty explains the predicted class.
    uncertaintyMethod, samples - how uncertainty is estimated and with how many samples.
    opacity - saliency opacity over the image; threshold - fraction of the saliency range hidden.
    outputSaliency, outputUncertainty - the result volumes of the last run.
    channel2Volume..channel4Volume - for a model that takes several volumes (one per MRI sequence), its input
        channels after the first, in the order its card names; resampled onto inputVolume's grid.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = SAMPLE_MODEL_NAME
    trustModel: bool = False
    clinicalTask: str = ""
    audience: Audience = Audience.RADIOLOGIST
    method: ExplanationMethod = ExplanationMethod.GRADCAM
    target: str = ""
    uncertaintyMethod: UncertaintyMethod = UncertaintyMethod.NONE
    samples: Annotated[int, WithinRange(2, 64)] = 8
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    outputSaliency: vtkMRMLScalarVolumeNode
    outputUncertainty: vtkMRMLScalarVolumeNode
    channel2Volume: vtkMRMLScalarVolumeNode
    channel3Volume: vtkMRMLScalarVolumeNode
    channel4Volume: vtkMRMLScalarVolumeNode


#
# XAIExplainWidget
#


class XAIExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: binds the .ui to the parameter node and calls the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # the background run in progress, if any
        self._unsupported = ""  # why this Slicer cannot run the engine, if it cannot

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XAIExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = XAIExplainLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.onTargetSelected)
        self.ui.clinicalTaskComboBox.connect("currentIndexChanged(int)", self.onClinicalTaskSelected)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.saveDicomButton.connect("clicked(bool)", self.onSaveDicom)
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""
        self.ui.summaryTextBrowser.setPlainText("")

        self.initializeParameterNode()
        # On a Slicer whose Python the engine cannot use, say so instead of failing in pip.
        self._unsupported = self.logic.unsupportedSlicerMessage()
        if self._unsupported:
            self.ui.statusLabel.text = self._unsupported
            self._onParameterNodeModified()

    def cleanup(self) -> None:
        if self._run:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run:
            self._run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.GetAttribute("XAI.role"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[XAIExplainParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying the "SlicerParameterName" dynamic property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._populateModels()
            self._showChannelSelectors()
            self._onParameterNodeModified()

    # --- model and target (lists depend on what is installed, so they are bound by hand) ---

    def _populateModels(self) -> None:
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for entry in self.logic.bundledModels():
            self.ui.modelComboBox.addItem(entry["title"], entry["name"])
        current = self._parameterNode.model
        index = self.ui.modelComboBox.findData(current)
        if index < 0 and current:
            self.ui.modelComboBox.addItem(os.path.basename(current.rstrip("/\\")), current)
            index = self.ui.modelComboBox.count - 1
        self.ui.modelComboBox.currentIndex = index
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self._populateTargets()
        self._populateClinicalTasks()

    def _populateTargets(self) -> None:
        wasBlocked = self.ui.targetComboBox.blockSignals(True)
        self.ui.targetComboBox.clear()
        for title, value in self.logic.targetChoices(self._parameterNode.model):
            self.ui.targetComboBox.addItem(title, value)
        index = self.ui.targetComboBox.findData(self._parameterNode.target)
        self.ui.targetComboBox.currentIndex = max(index, 0)
        self.ui.targetComboBox.blockSignals(wasBlocked)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)
            self._parameterNode.target = ""
            self._parameterNode.clinicalTask = ""
            self._populateTargets()
            self._populateClinicalTasks()
            self._showChannelSelectors()

    def _showChannelSelectors(self) -> None:
        """One selector per input channel after the first, named as the model's card names them."""
        names = self.logic.modelChannelNames(self._parameterNode.model) if self._parameterNode else []
        for number in range(2, MAX_INPUT_CHANNELS + 1):
            shown = number <= len(names)
            label, selector = getattr(self.ui, f"channel{number}Label"), getattr(self.ui, f"channel{number}Selector")
            label.text = (f"{names[number - 1]}:" if shown else _("Channel {number}:").format(number=number))
            label.visible = selector.visible = shown
        if names and len(names) > 1:
            self.ui.label_1.text = f"{names[0]}:"
        else:
            self.ui.label_1.text = _("Input volume:")

    def onBrowseModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a model bundle folder"))
        if folder and self._parameterNode:
            self._parameterNode.model = folder
            self._populateModels()

    def _populateClinicalTasks(self) -> None:
        """The catalogue's tasks the model serves (all tasks when its card names none)."""
        wasBlocked = self.ui.clinicalTaskComboBox.blockSignals(True)
        self.ui.clinicalTaskComboBox.clear()
        for taskId, title in self.logic.clinicalTasks(self._parameterNode.model):
            self.ui.clinicalTaskComboBox.addItem(title, taskId)
        index = self.ui.clinicalTaskComboBox.findData(self._parameterNode.clinicalTask)
        self.ui.clinicalTaskComboBox.currentIndex = max(index, 0)
        self.ui.clinicalTaskComboBox.blockSignals(wasBlocked)
        if index < 0 and self.ui.clinicalTaskComboBox.count:
            self.onClinicalTaskSelected(0)

    def onClinicalTaskSelected(self, index: int) -> None:
        """A task picks its recommended explanation method (the user may still change it)."""
        if self._parameterNode and index >= 0:
            self._parameterNode.clinicalTask = self.ui.clinicalTaskComboBox.itemData(index) or ""
            method = self.logic.recommendedMethod(self._parameterNode.clinicalTask)
            if method:
                self._parameterNode.method = ExplanationMethod(method)

    def onTargetSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.target = self.ui.targetComboBox.itemData(index) or ""

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the sample case."), waitCursor=True):
            self._parameterNode.inputVolume = self.logic.loadSampleCase()
            self._parameterNode.model = SAMPLE_MODEL_NAME
            self._populateModels()

    # --- live display updates and Apply state ---

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if not parameters:
            return
        if parameters.inputVolume and parameters.outputSaliency:
            self.logic.updateDisplay(parameters)
        self.ui.methodComboBox.toolTip = self.logic.methodAdvice(parameters.clinicalTask, parameters.method.value)
        self.ui.saveDicomButton.enabled = self.logic.lastResult is not None and not self._run \
            and parameters.inputVolume is not None
        if self._run:
            return
        if self._unsupported:
            self.ui.applyButton.toolTip = self._unsupported
            self.ui.applyButton.enabled = False
        elif parameters.inputVolume and parameters.model and (missing := self.logic.missingChannels(parameters)):
            self.ui.applyButton.toolTip = _("Select the volume of every input channel: {names}.").format(
                names=", ".join(missing))
            self.ui.applyButton.enabled = False
        elif parameters.inputVolume and parameters.model:
            self.ui.applyButton.toolTip = _("Run the model and explain its decision on the input volume.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume and a model.")
            self.ui.applyButton.enabled = False

    # --- Apply / Cancel ---

    def onApplyButton(self) -> None:
        if self._run:
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to explain the model's decision."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self._run = self.logic.startExplain(
                self._parameterNode, progressCallback=self._onProgress, completedCallback=self._onCompleted
            )
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the run; nothing is kept.")
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")

    def onSaveDicom(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the DICOM results"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to save the results as DICOM."), waitCursor=True):
            if not self.logic.ensureDicomDependencies(askConfirmation=True):
                return
            saved = self.logic.saveResultsAsDicom(self._parameterNode, folder)
            self.ui.statusLabel.text = _("Saved {count} DICOM objects in {folder}{imported}.").format(
                count=len(saved.files), folder=folder,
                imported=_(" and added them to the DICOM database") if saved.imported else "")

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _onCompleted(self, run) -> None:
        self._run = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.hide()
        if run.cancelled:
            run.cleanup()
            self.ui.statusLabel.text = _("Cancelled; no results were kept.")
        elif run.errorMessage:
            run.cleanup()
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(run.errorMessage)
        else:
            with slicer.util.tryWithErrorDisplay(_("Failed to show the results."), waitCursor=True):
                self.logic.applyRunResults(self._parameterNode, run)
                self.ui.statusLabel.text = _("Done.")
                self.ui.summaryTextBrowser.setPlainText(self.logic.summaryText(self._parameterNode))
                self._populateTargets()  # a segmentation result's predicted structures first
        self._onParameterNodeModified()


#
# Background work: XAIExplainLib.background jobs, watched from the main thread
#


class XAIJobWatcher:
    """Hands a background job's progress, and its end, to callbacks on the main thread.

    A Qt timer polls the job (``XAIExplainLib.background``): ``progressCallback(fraction, message)`` for
    each step reported, then ``completedCallback(job)`` once. :meth:`runToEnd` does the same without a
    timer, blocking (scripts and self-tests).
    """

    POLL_INTERVAL_MS = 200

    def __init__(self, job, progressCallback: Optional[Callable] = None, completedCallback: Optional[Callable] = None):
        self.job = job
        self.progressCallback = progressCallback
        self.completedCallback = completedCallback
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()

    def _poll(self) -> None:
        self._deliver(self.job, self.progressCallback, self.completedCallback, self._timer.stop)

    @classmethod
    def runToEnd(cls, job, progressCallback: Optional[Callable] = None, completedCallback: Optional[Callable] = None):
        job.wait()
        cls._deliver(job, progressCallback, completedCallback, lambda: None)
        return job

    @staticmethod
    def _deliver(job, progressCallback, completedCallback, stop) -> None:
        for fraction, message in job.poll():
            if progressCallback:
                progressCallback(fraction, message)
        if job.finished:
            stop()
            if completedCallback:
                completedCallback(job)


class XAIExplainJob(ProcessJob):
    """``slicer-xai explain`` in a background process, with the folder it writes its results to."""

    def __init__(self, argv: list, environment: dict, outputDirectory: str, temporaryDirectory: str):
        super().__init__(argv, environment, log=logging.info)
        self.outputDirectory = outputDirectory
        self.temporaryDirectory = temporaryDirectory
        self.watcher = None

    def cleanup(self) -> None:
        """Remove the run's input copy and results (after they were read, or when nothing is kept)."""
        shutil.rmtree(self.temporaryDirectory, ignore_errors=True)


#
# XAIExplainLogic
#


class XAIExplainLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable without the GUI (Python console, tests, other modules).

    Computation is the engine's (XAIExplainLib); scene work is the MRML glue's (XAIExplainLib.mrml).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        #: The engine result last put into the scene (for the written summary).
        self.lastResult = None

    def getParameterNode(self):
        return XAIExplainParameterNode(super().getParameterNode())

    # --- models ---

    def bundledModels(self) -> list:
        """Bundled models as ``{"name", "title", "class_names", "task"}``, read from their metadata only
        (no torch needed, so the list shows before dependencies are installed)."""
        models = []
        if not os.path.isdir(BUNDLED_MODELS_DIR):
            return models
        for name in sorted(os.listdir(BUNDLED_MODELS_DIR)):
            card = self._modelCard(os.path.join(BUNDLED_MODELS_DIR, name))
            if card is not None:
                models.append({"name": name, **card})
        return models

    def modelClassNames(self, model: str) -> list:
        """Class names of a bundled model (by name) or a bundle folder; empty when unknown."""
        return self._cardOf(model).get("class_names", [])

    def targetChoices(self, model: str) -> list:
        """``(title, value)`` of the target picker: the engine's default first (""), then, after a segmentation
        run of this model, the structures it predicted (largest first, with their volumes), then the other
        classes; 105-structure models list what is in the case first."""
        classNames = self.modelClassNames(model)
        segmenter = self._cardOf(model).get("task") == "segmentation"
        choices = [(_("Largest predicted structure") if segmenter else _("Predicted class"), "")]
        predicted = []
        result = self.lastResult
        if result is not None and list(result.prediction.get("class_names", [])) == classNames:
            from XAIExplainLib.pipeline import predicted_structures

            predicted = predicted_structures(result)
        choices += [(_("Predicted: {title}").format(title=title), name) for name, title in predicted]
        listed = {name for name, _title in predicted}
        return choices + [(name, name) for name in classNames if name not in listed]

    def modelChannelNames(self, model: str) -> list:
        """The names of the model's input channels, in order (one name for a one-volume model)."""
        return self._cardOf(model).get("channel_names", [])

    @classmethod
    def _cardOf(cls, model: str) -> dict:
        """The card summary of a bundled model (by name) or a bundle folder; empty when unknown."""
        if not model:
            return {}
        return cls._modelCard(model if os.path.isdir(model) else os.path.join(BUNDLED_MODELS_DIR, model)) or {}

    def channelVolumes(self, parameters) -> list:
        """The volumes of the model's input channels after the first, as selected (None where not yet)."""
        count = len(self.modelChannelNames(parameters.model))
        return [getattr(parameters, f"channel{number}Volume") for number in range(2, count + 1)]

    def missingChannels(self, parameters) -> list:
        """Names of the input channels that still need a volume."""
        names = self.modelChannelNames(parameters.model)
        return [name for name, volume in zip(names[1:], self.channelVolumes(parameters)) if volume is None]

    @staticmethod
    def _modelCard(bundlePath: str) -> Optional[dict]:
        """The card summary the pickers show, read from ``configs/metadata.json`` (None when unreadable);
        cached per file version, since every parameter change asks for it."""
        metadataPath = os.path.join(bundlePath, "configs", "metadata.json")
        plansPath = os.path.join(bundlePath, "plans.json")  # an nnU-Net trained model folder
        cardPath = plansPath if not os.path.isfile(metadataPath) and os.path.isfile(plansPath) else metadataPath
        try:
            status = os.stat(cardPath)
        except OSError:
            return None
        return _readModelCard(cardPath, status.st_mtime_ns, status.st_size)

    # --- clinical tasks and audiences (catalogue: Resources/Tasks/tasks.json) ---

    @staticmethod
    def clinicalTasks(model: str = "") -> list:
        """``(id, title)`` of the catalogue's tasks that ``model`` serves (when its card names none, the generic
        task of its kind and modality, else all of them). Reads JSON only, so the picker fills before the
        engine's dependencies are installed."""
        from XAIExplainLib import tasks

        from XAIExplainLib.errors import XAIInputError

        catalogue = tasks.load_catalogue()
        served = []
        if model:
            card = XAIExplainLogic._cardOf(model)
            served = tasks.tasks_for_model(card, catalogue)
            if not served:  # a bundle that names no task: the generic one of its kind and modality
                try:
                    served = [tasks.task_for_model(card, catalogue)]
                except XAIInputError:
                    served = []
        return [(t.id, t.title) for t in (served or catalogue.tasks.values())]

    @staticmethod
    def recommendedMethod(taskId: str) -> str:
        """The explanation method the task recommends first ("" for an unknown or empty task)."""
        from XAIExplainLib import tasks

        catalogue = tasks.load_catalogue()
        return catalogue.tasks[taskId].primary_method if taskId in catalogue.tasks else ""

    @staticmethod
    def methodAdvice(taskId: str, method: str) -> str:
        """Why the task recommends or advises against ``method``, with what the bench measured ("" when
        the task says nothing about it)."""
        from XAIExplainLib import tasks

        catalogue = tasks.load_catalogue()
        return catalogue.tasks[taskId].advice_text(method) if taskId in catalogue.tasks else ""

    # --- Slicer version and dependencies (installed on first Apply, never at import) ---

    @staticmethod
    def unsupportedSlicerMessage() -> str:
        """Why this Slicer cannot run the engine ("" when it can): its Python is older than MONAI needs."""
        if sys.version_info >= MINIMUM_PYTHON_VERSION:
            return ""
        return _("SlicerXAI needs 3D Slicer {minimum} or later: this Slicer runs Python {python}, and the "
                 "MONAI and Captum releases the engine uses need Python {needed} or later.").format(
            minimum=MINIMUM_SLICER_VERSION, python="%d.%d" % sys.version_info[:2],
            needed="%d.%d" % MINIMUM_PYTHON_VERSION)

    @staticmethod
    def dependenciesMissing() -> list:
        import importlib.util

        return [name for name in ("torch", "monai", "captum", "scipy", "nibabel", "einops", "yaml")
                if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install torch (through the PyTorch extension) and the engine's requirements, keeping torch at the
        version PyTorch Utils chose. Returns False if the user declined."""
        unsupported = self.unsupportedSlicerMessage()
        if unsupported:
            raise RuntimeError(unsupported)
        missing = self.dependenciesMissing()
        if not missing:
            return True

        def install() -> None:
            if "torch" in missing:
                self._installTorch()
            slicer.util.pip_install(self.pipRequirements())

        question = _("XAI Explain needs these Python packages: {packages}. Install them now? "
                     "This may take several minutes.").format(packages=", ".join(missing))
        return self._installAfterAsking(question, install, self.dependenciesMissing, askConfirmation)

    @classmethod
    def ensureDicomDependencies(cls, askConfirmation: bool = True) -> bool:
        """Install highdicom for Save as DICOM on first use; False if the user declined."""
        import importlib.util

        def missing() -> list:
            return [] if importlib.util.find_spec("highdicom") is not None else list(DICOM_REQUIREMENTS)

        if not missing():
            return True
        question = _("Save as DICOM needs the Python package {packages} (it updates pydicom to version 3). Install "
                     "it now?").format(packages=", ".join(DICOM_REQUIREMENTS))
        return cls._installAfterAsking(question, lambda: slicer.util.pip_install(DICOM_REQUIREMENTS), missing,
                                       askConfirmation)

    @staticmethod
    def _installAfterAsking(question: str, install: Callable[[], None], missing: Callable[[], list],
                            askConfirmation: bool) -> bool:
        """Ask (unless told not to), install with a wait cursor, and fail loudly if anything is still missing."""
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(question):
            return False
        with slicer.util.WaitCursor():
            install()
        stillMissing = missing()
        if stillMissing:
            raise RuntimeError(_("Could not install: {packages}.").format(packages=", ".join(stillMissing)))
        return True

    @staticmethod
    def pipRequirements(torchVersion: Optional[str] = None) -> list:
        """The ``pip install`` arguments for the engine: its requirements plus ``torch==<installed>``, so that
        pip can never replace the torch build PyTorch Utils installed (a newer one may be a CUDA build of
        several GB). Refuses a torch older than MONAI needs."""
        if torchVersion is None:
            import torch

            torchVersion = torch.__version__
        release = tuple(int(part) for part in torchVersion.split("+")[0].split(".")[:2] if part.isdigit())
        if release < MINIMUM_TORCH_VERSION:
            raise RuntimeError(_("PyTorch {version} is older than the {minimum} that MONAI needs: update it in the "
                                 "PyTorch Utils module (requirement {requirement}).").format(
                version=torchVersion, minimum="%d.%d" % MINIMUM_TORCH_VERSION, requirement=TORCH_REQUIREMENT))
        return [*PYTHON_REQUIREMENTS, f"torch=={torchVersion}"]

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            # pip alone would take a CUDA build of several GB on Linux; PyTorch Utils picks the right one.
            raise RuntimeError(_("Install the PyTorch extension from the Extensions Manager and restart Slicer: "
                                 "SlicerXAI installs torch through it.")) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError(_("PyTorch could not be installed; use the PyTorch Utils module."))

    # --- sample data ---

    @staticmethod
    def sampleCases() -> list:
        """``(name, path)`` of the bundled sample cases, from ``samples.json`` (JSON only: no engine needed)."""
        folder = resources.sample_data_dir()
        try:
            entries = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        cases = [(str(entry["name"]), folder / f"{entry['name']}.nii.gz") for entry in entries if "name" in entry]
        return [(name, str(path)) for name, path in cases if path.is_file()]

    def loadSampleCase(self):
        """Load the bundled sample case and return its volume node."""
        if not os.path.isfile(SAMPLE_CASE_PATH):
            raise FileNotFoundError(_("The sample case is missing: {path}").format(path=SAMPLE_CASE_PATH))
        return slicer.util.loadVolume(SAMPLE_CASE_PATH, {"name": "brain-lesion-case1"})

    # --- the background process ---

    @staticmethod
    def enginePythonPath() -> list:
        """The folders holding the engine's packages, as this process imports them.

        Slicer puts module folders on its own ``sys.path``, not in the environment, so a child process sees
        none of them unless told; the command line needs all three packages (it imports both Libs).
        """
        import importlib.util

        folders = []
        for package in ("XAICommandLine", "XAIExplainLib", "XAIRobustnessLib"):
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError(_("The {package} package of SlicerXAI was not found: install the extension, or add "
                                     "both its XAIExplain and XAIRobustness folders to the additional module "
                                     "paths.").format(package=package))
            folder = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
            if folder not in folders:
                folders.append(folder)
        return folders

    @staticmethod
    def pythonExecutable() -> str:
        # Inside Slicer, sys.executable is the application; PythonSlicer is the bare interpreter's launcher.
        return shutil.which("PythonSlicer") or sys.executable

    def backgroundCommand(self, arguments: list):
        """``(argv, environment)`` of ``slicer-xai <arguments>`` run by PythonSlicer: the environment Slicer
        started with (the launcher adds its own paths again), plus the engine's folders."""
        environment = slicer.util.startupEnvironment() if hasattr(slicer, "app") else dict(os.environ)
        inherited = environment.get("PYTHONPATH")
        environment.update({
            "PYTHONPATH": os.pathsep.join([*self.enginePythonPath(), *([inherited] if inherited else [])]),
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "SLICER_XAI_PROGRESS": "all",  # every step from the start: the progress bar moves at once
        })
        return [self.pythonExecutable(), "-m", "XAICommandLine", *arguments], environment

    # --- running ---

    def explainArguments(self, parameters, inputPath, outputDirectory: str) -> list:
        """The ``slicer-xai explain`` arguments for ``parameters`` (``inputPath``: one path, or one per channel)."""
        inputPaths = [inputPath] if isinstance(inputPath, str) else list(inputPath)
        arguments = ["explain", *inputPaths, "--model", parameters.model, "--method", parameters.method.value,
                     "--uncertainty", parameters.uncertaintyMethod.value, "--samples", str(parameters.samples),
                     "--format", "nrrd", "--out", outputDirectory]
        if parameters.target:
            arguments += ["--target", parameters.target]
        if parameters.trustModel:
            arguments.append("--trust-bundle")
        return arguments

    def launchExplain(self, parameters):
        """Write the input with its exact geometry and start ``slicer-xai explain`` on it in a background
        process; return the started :class:`XAIExplainJob` (Qt-free: :meth:`startExplain` watches it)."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml

        inputVolume = parameters.inputVolume
        if inputVolume is None:
            raise ValueError(_("Select an input volume."))
        workDirectory = tempfile.mkdtemp(prefix="SlicerXAI-")
        try:
            inputPaths = []
            for number, volume in enumerate(self._inputVolumes(parameters), start=1):
                inputPaths.append(os.path.join(workDirectory, "input.nrrd" if number == 1 else f"input{number}.nrrd"))
                sitk.WriteImage(mrml.volumeNodeToImage(volume, sitk.sitkFloat32), inputPaths[-1])
            outputDirectory = os.path.join(workDirectory, "results")
            argv, environment = self.backgroundCommand(self.explainArguments(parameters, inputPaths, outputDirectory))
            job = XAIExplainJob(argv, environment, outputDirectory=outputDirectory, temporaryDirectory=workDirectory)
            return job.start()
        except BaseException:
            shutil.rmtree(workDirectory, ignore_errors=True)
            raise

    def _inputVolumes(self, parameters) -> list:
        """The input volume, then one per further input channel of the model; refuses a missing one."""
        missing = self.missingChannels(parameters)
        if missing:
            raise ValueError(_("Select the volume of every input channel: {names}.").format(names=", ".join(missing)))
        return [parameters.inputVolume, *self.channelVolumes(parameters)]

    def startExplain(self, parameters, progressCallback=None, completedCallback=None, waitForCompletion=False):
        """Run the engine on ``parameters.inputVolume`` in a background process; return the job.

        Progress goes to ``progressCallback(fraction, message)`` and ``completedCallback(job)`` is called once,
        both on the main thread; :meth:`applyRunResults` then puts the results into the scene.
        """
        job = self.launchExplain(parameters)
        if waitForCompletion:
            return XAIJobWatcher.runToEnd(job, progressCallback, completedCallback)
        job.watcher = XAIJobWatcher(job, progressCallback, completedCallback)
        return job

    def readRunResults(self, run):
        """The files a finished run wrote, as an engine-like result (``mrml.ExplanationOutputs``)."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml

        with open(os.path.join(run.outputDirectory, "result.json"), encoding="utf-8") as reportFile:
            report = json.load(reportFile)
        files = report.get("files", {})

        def image(role):
            return sitk.ReadImage(os.path.join(run.outputDirectory, files[role])) if role in files else None

        outputs = mrml.ExplanationOutputs(
            saliency=sitk.Cast(image("saliency"), sitk.sitkFloat32),
            uncertainty=image("uncertainty"),
            segmentation=image("segmentation"),
            prediction=report.get("prediction", {}),
            provenance=report.get("provenance", {}),
        )
        outputs.report = report
        return outputs

    def applyRunResults(self, parameters, run):
        """Put a finished run's results into the scene; remove its temporary files."""
        try:
            outputs = self.readRunResults(run)
            nodes = self.applyResult(parameters, outputs)
            self.lastResult = self._engineResult(outputs)
            return nodes
        finally:
            run.cleanup()

    def explain(self, parameters, progress=None, cancel=None):
        """Run the engine in this process (scripts and tests); return the result nodes."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIExplainLib.models import load_model
        from XAIExplainLib.pipeline import explain_image

        model = load_model(parameters.model, trust_bundle=parameters.trustModel)
        image, *others = [mrml.volumeNodeToImage(volume, sitk.sitkFloat32) for volume in self._inputVolumes(parameters)]
        result = explain_image(image, model, method=parameters.method.value, target=parameters.target or None,
                               uncertainty=parameters.uncertaintyMethod.value, samples=parameters.samples,
                               progress=progress, cancel=cancel, other_channels=others)
        return self.applyResult(parameters, result)

    def applyResult(self, parameters, result):
        """Result nodes from an engine result, recorded in the parameter node and shown."""
        from XAIExplainLib import mrml

        inputVolume = parameters.inputVolume
        nodes = mrml.applyExplanationResult(inputVolume.GetScene(), inputVolume, result, parameters.method.value,
                                            opacity=parameters.opacity, threshold=parameters.threshold)
        for node in (nodes.saliency, nodes.uncertainty, nodes.review, nodes.segmentation):
            if node is not None:
                node.SetAttribute("XAI.clinicalTask", parameters.clinicalTask)
                node.SetAttribute("XAI.audience", parameters.audience.value)
        parameters.outputSaliency = nodes.saliency
        parameters.outputUncertainty = nodes.uncertainty
        self.lastResult = result
        return nodes

    def saveResultsAsDicom(self, parameters, folder: str):
        """Write the last result as DICOM Parametric Maps, SEG and a TID 1500 SR into ``folder`` (new or empty).

        They reference the input's own series when it was loaded from the DICOM database (its
        ``DICOM.instanceUIDs``); otherwise the volume is first written as a new series (``source/``). Where
        Slicer has a DICOM database, the objects are imported into it. Returns the engine's ``DicomExport``
        with ``imported`` set.
        """
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIExplainLib.dicom import reference_series, write_dicom_results
        from XAIExplainLib.imageio import staged_output_dir

        if self.lastResult is None or parameters.inputVolume is None:
            raise ValueError(_("Run the explanation first: there is no result to save."))
        image = mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32)
        headers = self._sourceDicomHeaders(parameters.inputVolume)
        with staged_output_dir(folder) as staging:
            source = reference_series(image, headers, os.path.join(staging, "source"))
            export = write_dicom_results(self.lastResult, source, os.path.join(staging, "dicom"))
        files = {role: pathlib.Path(folder, "dicom", pathlib.Path(path).name) for role, path in export.files.items()}
        return dataclasses.replace(export, files=files, imported=self._importIntoDicomDatabase(folder))

    @staticmethod
    def _sourceDicomHeaders(volumeNode) -> Optional[list]:
        """The headers of the DICOM files a volume was loaded from (Slicer's DICOM loader records their SOP
        Instance UIDs on the node), or None for a volume that did not come from the DICOM database."""
        import pydicom

        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        paths = [database.fileForInstance(uid) for uid in uids]
        if not all(paths):
            return None
        return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]

    @staticmethod
    def _importIntoDicomDatabase(folder: str) -> bool:
        if getattr(slicer, "dicomDatabase", None) is None or not hasattr(slicer, "app"):
            return False
        from DICOMLib import DICOMUtils

        DICOMUtils.importDicom(folder)
        return True

    def updateDisplay(self, parameters) -> None:
        """Follow opacity and threshold changes on the shown results."""
        from XAIExplainLib import mrml

        saliency = parameters.outputSaliency
        if saliency is None or saliency.GetScene() is None:
            return
        try:
            shownThreshold = float(saliency.GetAttribute("XAI.displayThreshold") or "nan")
        except ValueError:
            shownThreshold = float("nan")
        if shownThreshold != parameters.threshold:
            mrml.setSaliencyThreshold(saliency, parameters.threshold)
        mrml.setForegroundOpacity(saliency.GetScene(), parameters.inputVolume, parameters.opacity)

    @staticmethod
    def _engineResult(outputs):
        """A background run's files (``mrml.ExplanationOutputs`` with its ``report``) as an engine result."""
        from XAIExplainLib.pipeline import ExplanationResult

        report = getattr(outputs, "report", {}) or {}
        return ExplanationResult(saliency=outputs.saliency, prediction=outputs.prediction,
                                 explanation=report.get("explanation", {}), provenance=outputs.provenance,
                                 uncertainty=outputs.uncertainty, uncertainty_info=report.get("uncertainty", {}),
                                 segmentation=outputs.segmentation, applicability=report.get("applicability", {}))

    def summaryText(self, parameters, result=None) -> str:
        """The written summary of ``result`` (default: the last one shown) for ``parameters.audience``,
        from the audience's writer and the clinical task's catalogue entry."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIExplainLib.audiences import EVIDENCE_TOP_PERCENT, build_case_facts, get_audience
        from XAIExplainLib.models import read_model_spec, resolve_model_path
        from XAIExplainLib.tasks import get_task

        result = result or self.lastResult
        if result is None:
            return ""
        spec = read_model_spec(resolve_model_path(parameters.model))
        taskId = parameters.clinicalTask or (spec.clinical_tasks[0] if spec.clinical_tasks else "")
        image = mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32)
        method = result.explanation.get("method", parameters.method.value)
        facts = build_case_facts(image, {method: result}, get_task(taskId), spec, EVIDENCE_TOP_PERCENT)
        return get_audience(parameters.audience.value).write(facts).as_text()


@functools.lru_cache(maxsize=64)
def _readModelCard(metadataPath: str, _mtime: int, _size: int) -> Optional[dict]:
    """The card summary of one version of a ``metadata.json`` or an nnU-Net ``plans.json`` (see
    ``XAIExplainLogic._modelCard``)."""
    if os.path.basename(metadataPath) == "plans.json":
        from XAIExplainLib.errors import XAIModelError
        from XAIExplainLib.nnunet_card import nnunet_card_metadata

        try:
            metadata = nnunet_card_metadata(pathlib.Path(os.path.dirname(metadataPath)))
        except (OSError, XAIModelError):
            return None
    else:
        try:
            with open(metadataPath, encoding="utf-8") as metadataFile:
                metadata = json.load(metadataFile)
        except (OSError, ValueError):
            return None
    if not isinstance(metadata, dict):
        return None
    # The card as the engine reads it (a zoo bundle's own metadata, overridden by its xai section);
    # metadata only, so the pickers fill before the engine's dependencies are installed.
    xai, channels = derive_card(metadata, None).xai, input_channel_names(metadata)
    return {
        "title": str(metadata.get("name") or os.path.basename(os.path.dirname(os.path.dirname(metadataPath)))),
        "class_names": [str(c) for c in xai.get("class_names", [])],
        "task": xai.get("task", ""),
        "clinical_tasks": [str(t) for t in xai.get("clinical_tasks", [])],
        "modality": xai.get("modality"),
        # More channels than the selectors offer: one selector, and the engine names what it needs.
        "channel_names": channels if len(channels) <= MAX_INPUT_CHANNELS else channels[:1],
    }


#
# XAIExplainTest
#


class XAIExplainTest(ScriptedLoadableModuleTest):
    """Runs the bundled model on the bundled sample case, in process and in a background process."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExplainSampleCase()
        self.setUp()
        self.test_BackgroundRun()

    def _parameters(self):
        logic = XAIExplainLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = logic.loadSampleCase()
        parameters.model = SAMPLE_MODEL_NAME
        parameters.method = ExplanationMethod.GRADCAM
        parameters.uncertaintyMethod = UncertaintyMethod.MC_DROPOUT
        parameters.samples = 4
        return logic, parameters

    def test_ExplainSampleCase(self):
        self.delayDisplay(_("Explaining the sample case"))
        logic, parameters = self._parameters()
        logic.ensureDependencies(askConfirmation=False)
        nodes = logic.explain(parameters)
        inputVolume = parameters.inputVolume
        self.assertEqual(nodes.saliency.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions())
        self.assertEqual(nodes.saliency.GetName(), f"{inputVolume.GetName()} gradcam saliency")
        self.assertIsNotNone(nodes.uncertainty)
        self.assertTrue(nodes.saliency.GetAttribute("XAI.modelSha256"))
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), nodes.saliency.GetID())
        self.assertIn(nodes.saliency.GetAttribute("XAI.predictedLabel"), logic.summaryText(parameters))
        numberOfNodes = slicer.mrmlScene.GetNumberOfNodes()
        logic.explain(parameters)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), numberOfNodes)
        self.delayDisplay(_("Test passed"))

    def test_BackgroundRun(self):
        self.delayDisplay(_("Explaining the sample case in a background process"))
        logic, parameters = self._parameters()
        progress = []
        run = logic.startExplain(parameters, progressCallback=lambda f, m: progress.append(f), waitForCompletion=True)
        self.assertEqual(run.returnCode, 0, run.errorMessage)
        nodes = logic.applyRunResults(parameters, run)
        self.assertEqual(parameters.outputSaliency, nodes.saliency)
        self.assertFalse(os.path.exists(run.temporaryDirectory))
        self.delayDisplay(_("Test passed"))
