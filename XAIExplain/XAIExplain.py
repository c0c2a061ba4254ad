import enum
import json
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
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
# SimpleITK, which are installed on first use, never when Slicer loads the module.

#: The extension's root folder (holds Resources/Models and Resources/SampleData).
EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_MODELS_DIR = os.path.join(EXTENSION_ROOT, "Resources", "Models")
SAMPLE_CASE_PATH = os.path.join(EXTENSION_ROOT, "Resources", "SampleData", "brain-lesion-case1.nii.gz")
SAMPLE_MODEL_NAME = "brain-lesion-classifier"
#: The torch build the engine is tested with; later ones may pull a CUDA build of several GB.
TORCH_REQUIREMENT = ">=2.2,<=2.13.0"
#: Everything else the engine needs (torch is installed through the PyTorch extension).
PYTHON_REQUIREMENTS = ["monai==1.6.1", "captum==0.9.0", "scipy>=1.11", "nibabel>=5"]


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
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""
        self.ui.summaryTextBrowser.setPlainText("")

        self.initializeParameterNode()

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
        self.ui.targetComboBox.addItem(_("Predicted class"), "")
        for className in self.logic.modelClassNames(self._parameterNode.model):
            self.ui.targetComboBox.addItem(className, className)
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
        if self._run:
            return
        if parameters.inputVolume and parameters.model:
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
        self._onParameterNodeModified()


#
# Background run: the engine's command line in a separate PythonSlicer process
#


class XAIBackgroundRun:
    """Runs ``slicer-xai`` (``python -m XAIExplainLib.cli``) in a separate process.

    The GUI stays responsive: a reader thread collects the process output and a Qt timer hands
    progress lines (``[ 42%] message``) to ``progressCallback`` on the main thread. ``cancel()``
    kills the process; ``completedCallback(run)`` is called once, on the main thread.
    """

    POLL_INTERVAL_MS = 200
    _PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")

    def __init__(self, arguments: list, outputDirectory: str, progressCallback: Optional[Callable] = None,
                 completedCallback: Optional[Callable] = None, temporaryDirectory: Optional[str] = None):
        self.arguments = arguments
        self.outputDirectory = outputDirectory
        self.temporaryDirectory = temporaryDirectory
        self.progressCallback = progressCallback
        self.completedCallback = completedCallback
        self.cancelled = False
        self.returnCode = None
        self.errorMessage = ""
        self.lastLines = []
        self._lines = queue.Queue()
        self._process = None
        self._reader = None
        self._timer = None
        self._finished = False

    @staticmethod
    def pythonExecutable() -> str:
        # Inside Slicer, sys.executable is the application; PythonSlicer is the bare interpreter.
        pythonSlicer = shutil.which("PythonSlicer")
        return pythonSlicer or sys.executable

    def start(self, waitForCompletion: bool = False) -> "XAIBackgroundRun":
        command = [self.pythonExecutable(), "-m", "XAIExplainLib.cli", *self.arguments]
        modulePath = os.path.dirname(os.path.abspath(__file__))
        environment = {"PYTHONPATH": os.pathsep.join(filter(None, [modulePath, os.environ.get("PYTHONPATH")])),
                       "PYTHONUNBUFFERED": "1"}
        logging.debug(f"XAIExplain: launching {command}")
        self._process = slicer.util.launchConsoleProcess(command, updateEnvironment=environment)
        if waitForCompletion:
            for line in self._process.stdout:
                self._handleLine(line.rstrip())
            self._process.wait()
            self._finish()
            return self
        self._reader = threading.Thread(target=self._readOutput, daemon=True)
        self._reader.start()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and not self._finished

    def cancel(self) -> None:
        if self._process and self._process.poll() is None:
            self.cancelled = True
            self._process.kill()

    def _readOutput(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip())
        self._process.wait()
        self._lines.put(None)  # end of output

    def _poll(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._timer.stop()
                self._finish()
                return
            self._handleLine(line)

    def _handleLine(self, line: str) -> None:
        if not line:
            return
        match = self._PROGRESS_LINE.match(line)
        if match:
            if self.progressCallback:
                self.progressCallback(int(match.group(1)) / 100.0, match.group(2))
            return
        logging.info(line)
        self.lastLines = (self.lastLines + [line])[-20:]

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.returnCode = self._process.returncode
        if not self.cancelled and self.returnCode != 0:
            # The command line states user errors in one line starting "slicer-xai:".
            messages = [line for line in self.lastLines if line.startswith("slicer-xai:")]
            self.errorMessage = (messages[-1] if messages else "\n".join(self.lastLines[-5:])) or _(
                "The explanation process stopped with exit code {code}.").format(code=self.returnCode)
            self.errorMessage = self.errorMessage.replace("slicer-xai: error: ", "").replace("slicer-xai: ", "")
        if self.completedCallback:
            self.completedCallback(self)

    def cleanup(self) -> None:
        if self.temporaryDirectory:
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
        if not model:
            return []
        path = model if os.path.isdir(model) else os.path.join(BUNDLED_MODELS_DIR, model)
        card = self._modelCard(path)
        return card["class_names"] if card else []

    @staticmethod
    def _modelCard(bundlePath: str) -> Optional[dict]:
        metadataPath = os.path.join(bundlePath, "configs", "metadata.json")
        if not os.path.isfile(metadataPath):
            return None
        try:
            with open(metadataPath, encoding="utf-8") as metadataFile:
                metadata = json.load(metadataFile)
        except (OSError, ValueError):
            return None
        xai = metadata.get("xai") or {}
        return {
            "title": str(metadata.get("name") or os.path.basename(bundlePath)),
            "class_names": [str(c) for c in xai.get("class_names", [])],
            "task": xai.get("task", ""),
            "clinical_tasks": [str(t) for t in xai.get("clinical_tasks", [])],
            "modality": xai.get("modality"),
        }

    # --- clinical tasks and audiences (catalogue: Resources/Tasks/tasks.json) ---

    @staticmethod
    def clinicalTasks(model: str = "") -> list:
        """``(id, title)`` of the catalogue's tasks that ``model`` serves (all of them when its card names
        none). Reads JSON only, so the picker fills before the engine's dependencies are installed."""
        from XAIExplainLib import tasks

        catalogue = tasks.load_catalogue()
        served = []
        if model:
            path = model if os.path.isdir(model) else os.path.join(BUNDLED_MODELS_DIR, model)
            card = XAIExplainLogic._modelCard(path) or {}
            served = tasks.tasks_for_model(card, catalogue)
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

    # --- dependencies (installed on first Apply, never at import) ---

    @staticmethod
    def dependenciesMissing() -> list:
        import importlib.util

        return [name for name in ("torch", "monai", "captum", "scipy", "nibabel") if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install torch (through the PyTorch extension when present) and the engine's requirements.
        Returns False if the user declined."""
        missing = self.dependenciesMissing()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("XAI Explain needs these Python packages: {packages}. Install them now? "
              "This may take several minutes.").format(packages=", ".join(missing))
        ):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                self._installTorch()
            slicer.util.pip_install(PYTHON_REQUIREMENTS)
        stillMissing = self.dependenciesMissing()
        if stillMissing:
            raise RuntimeError(_("Could not install: {packages}.").format(packages=", ".join(stillMissing)))
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            # No PyTorch extension: the CPU build from PyPI, pinned so pip never picks a CUDA build.
            slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
            return
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError(_("PyTorch could not be installed; use the PyTorch Utils module."))

    # --- sample data ---

    def loadSampleCase(self):
        """Load the bundled sample case and return its volume node."""
        if not os.path.isfile(SAMPLE_CASE_PATH):
            raise FileNotFoundError(_("The sample case is missing: {path}").format(path=SAMPLE_CASE_PATH))
        return slicer.util.loadVolume(SAMPLE_CASE_PATH, {"name": "brain-lesion-case1"})

    # --- running ---

    def explainArguments(self, parameters, inputPath: str, outputDirectory: str) -> list:
        """The ``slicer-xai explain`` arguments for ``parameters``."""
        arguments = ["explain", inputPath, "--model", parameters.model, "--method", parameters.method.value,
                     "--uncertainty", parameters.uncertaintyMethod.value, "--samples", str(parameters.samples),
                     "--format", "nrrd", "--out", outputDirectory]
        if parameters.target:
            arguments += ["--target", parameters.target]
        if parameters.trustModel:
            arguments.append("--trust-bundle")
        return arguments

    def startExplain(self, parameters, progressCallback=None, completedCallback=None, waitForCompletion=False):
        """Run the engine on ``parameters.inputVolume`` in a background process; return the run.

        The input is written with its exact geometry; results are read back by
        :meth:`applyRunResults` once ``completedCallback(run)`` is called.
        """
        import SimpleITK as sitk

        from XAIExplainLib import mrml

        inputVolume = parameters.inputVolume
        if inputVolume is None:
            raise ValueError(_("Select an input volume."))
        workDirectory = tempfile.mkdtemp(prefix="SlicerXAI-")
        inputPath = os.path.join(workDirectory, "input.nrrd")
        sitk.WriteImage(mrml.volumeNodeToImage(inputVolume, sitk.sitkFloat32), inputPath)
        outputDirectory = os.path.join(workDirectory, "results")
        run = XAIBackgroundRun(self.explainArguments(parameters, inputPath, outputDirectory), outputDirectory,
                               progressCallback, completedCallback, temporaryDirectory=workDirectory)
        return run.start(waitForCompletion=waitForCompletion)

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
        image = mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32)
        result = explain_image(image, model, method=parameters.method.value, target=parameters.target or None,
                               uncertainty=parameters.uncertaintyMethod.value, samples=parameters.samples,
                               progress=progress, cancel=cancel)
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
                                 segmentation=outputs.segmentation)

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
