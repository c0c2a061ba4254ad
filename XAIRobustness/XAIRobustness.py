import enum
import os
from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
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

# XAIExplain is a dependency of this module: its choices, model list, dependency installer and job watcher
# are reused; the background-job runner is standard library only.
from XAIExplain import SAMPLE_MODEL_NAME, ExplanationMethod, XAIExplainLogic, XAIJobWatcher
from XAIExplainLib.background import ThreadJob

# Engine code (XAIExplainLib, XAIRobustnessLib computations) is imported inside Logic methods.


#
# XAIRobustness
#


class XAIRobustness(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XAI Robustness")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Explainability")]
        self.parent.dependencies = ["XAIExplain"]
        self.parent.contributors = ["SlicerXAI developers"]
        self.parent.helpText = _("""
Test how far a model's prediction and its explanation hold up on the open case: perturb the image
(noise, blur, contrast, MRI artefacts, CT dose and slice thickness, small motions) at increasing
severities, re-run model and explanation, and plot how confidence and the saliency map change.
See the <a href="https://github.com/SlicerXAI/SlicerXAI#readme">SlicerXAI documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the SlicerXAI contributors; builds on the XAI Explain module.
""")


class Perturbation(enum.Enum):
    GAUSSIAN_NOISE = "gaussian-noise"
    GAUSSIAN_BLUR = "blur"
    CONTRAST = "contrast"
    BIAS_FIELD = "bias-field"
    GHOSTING = "ghosting"
    MOTION = "motion"
    CT_DOSE = "ct-dose"
    SLICE_THICKNESS = "slice-thickness"

    def label(self):
        return {
            Perturbation.GAUSSIAN_NOISE: _("Gaussian noise"),
            Perturbation.GAUSSIAN_BLUR: _("Blur"),
            Perturbation.CONTRAST: _("Contrast change"),
            Perturbation.BIAS_FIELD: _("MRI bias field"),
            Perturbation.GHOSTING: _("MRI ghosting"),
            Perturbation.MOTION: _("Motion"),
            Perturbation.CT_DOSE: _("CT low dose"),
            Perturbation.SLICE_THICKNESS: _("Slice thickness"),
        }[self]


#
# XAIRobustnessParameterNode
#


@parameterNodeWrapper
class XAIRobustnessParameterNode:
    """The user's choices, saved with the scene.

    inputVolume - the case; model - bundled model name or bundle folder; method - explanation method.
    trustModel - the user's word that the model's own code may run (TorchScript, bundle expressions).
    perturbation, maxSeverity - what is perturbed and how far (severities 0..maxSeverity).
    opacity, threshold - how the perturbed case's saliency is shown.
    outputTable, outputPerturbed - the sweep table and the most severe perturbed case of the last run.
    reference - the case's ground truth (segmentation or label map) to score the shown explanation against.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = SAMPLE_MODEL_NAME
    trustModel: bool = False
    method: ExplanationMethod = ExplanationMethod.GRADCAM
    perturbation: Perturbation = Perturbation.GAUSSIAN_NOISE
    maxSeverity: Annotated[int, WithinRange(1, 5)] = 5
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    outputTable: vtkMRMLTableNode
    outputPerturbed: vtkMRMLScalarVolumeNode
    reference: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]] = None


#
# XAIRobustnessWidget
#


class XAIRobustnessWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: binds the .ui to the parameter node and calls the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the background work in progress, if any

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XAIRobustness.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = XAIRobustnessLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.sanityButton.connect("clicked(bool)", self.onSanityButton)
        self.ui.faithfulnessButton.connect("clicked(bool)", self.onFaithfulnessButton)
        self.ui.localisationButton.connect("clicked(bool)", self.onLocalisationButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job:
            self._job.cancel()
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

    def setParameterNode(self, inputParameterNode: Optional[XAIRobustnessParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying the "SlicerParameterName" dynamic property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._populateModels()
            self._checkCanApply()

    def _populateModels(self) -> None:
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for entry in self.logic.explainLogic.bundledModels():
            self.ui.modelComboBox.addItem(entry["title"], entry["name"])
        index = self.ui.modelComboBox.findData(self._parameterNode.model)
        if index < 0 and self._parameterNode.model:
            self.ui.modelComboBox.addItem(os.path.basename(self._parameterNode.model.rstrip("/\\")), self._parameterNode.model)
            index = self.ui.modelComboBox.count - 1
        self.ui.modelComboBox.currentIndex = index
        self.ui.modelComboBox.blockSignals(wasBlocked)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def _actionButtons(self) -> list:
        return [self.ui.applyButton, self.ui.sanityButton, self.ui.faithfulnessButton, self.ui.localisationButton]

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job:
            return  # during a run only its Cancel button is live
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.model)
        self.ui.applyButton.toolTip = (_("Perturb the case at each severity and re-run model and explanation.") if ready
                                       else _("Select an input volume and a model."))
        self.ui.applyButton.enabled = ready
        self.ui.sanityButton.enabled = ready
        self.ui.faithfulnessButton.enabled = ready
        self.ui.localisationButton.enabled = ready and self._parameterNode.reference is not None

    def onApplyButton(self) -> None:
        self._runInBackground("sweep", self.ui.applyButton, _("The robustness sweep failed."))

    def onSanityButton(self) -> None:
        self._runInBackground("sanity", self.ui.sanityButton, _("The sanity check failed."))

    def onFaithfulnessButton(self) -> None:
        self._runInBackground("faithfulness", self.ui.faithfulnessButton, _("The faithfulness test failed."))

    def onLocalisationButton(self) -> None:
        """Score the explanation XAIExplain last showed for the input against the chosen reference."""
        with slicer.util.tryWithErrorDisplay(_("Scoring against the reference failed."), waitCursor=True):
            from XAIExplainLib import mrml

            saliencyNode = mrml.findResultNode(slicer.mrmlScene, self._parameterNode.inputVolume, "saliency")
            scores, _tableNode = self.logic.computeLocalisation(saliencyNode, self._parameterNode.reference)
            self.ui.statusLabel.text = _(
                "Peak {where} the reference; {mass:.0%} of the positive evidence inside it (chance {share:.1%}); "
                "AUPRC {auprc:.2f}; top-k IoU {iou:.2f}.").format(
                where=_("inside") if scores.pointing_hit else _("outside"), mass=scores.mass_in_lesion,
                share=scores.lesion_share, auprc=scores.auprc, iou=scores.top_k_iou)

    def _runInBackground(self, kind: str, button, failureMessage: str) -> None:
        """Run the Logic's ``kind`` task in a background thread; its button becomes Cancel, the others are
        disabled until it ends (no second run can start), and the results are shown on the main thread."""
        if self._job:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=False):
            if not self.logic.explainLogic.ensureDependencies(askConfirmation=True):
                return
            work, show = self.logic.backgroundTask(kind, self._parameterNode)
            self._job = ThreadJob(work).start()
            self._runButton, self._runButtonText = button, button.text
            for other in self._actionButtons():
                other.enabled = other is button
            button.text = _("Cancel")
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
            self._watcher = XAIJobWatcher(self._job, self._onProgress,
                                          lambda job: self._onCompleted(job, show, failureMessage))

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _onCompleted(self, job, show, failureMessage: str) -> None:
        self._job = self._watcher = None
        self._runButton.text = self._runButtonText
        self.ui.progressBar.hide()
        if job.cancelled:
            self.ui.statusLabel.text = _("Cancelled; no results were kept.")
        elif job.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(f"{failureMessage}\n{job.errorMessage}")
        else:
            with slicer.util.tryWithErrorDisplay(_("Failed to show the results."), waitCursor=True):
                show(job.result)
                self.logic.showChartInLayout()
                self.ui.statusLabel.text = _("Done.")
        self._checkCanApply()


#
# XAIRobustnessLogic
#


class XAIRobustnessLogic(ScriptedLoadableModuleLogic):
    """Perturbation sweeps, randomisation sanity checks and deletion / insertion tests on the open case.
    Computation: ``XAIRobustnessLib.sweep``, ``.sanity``, ``.faithfulness``; scene work:
    ``XAIRobustnessLib.sweepNodes`` and ``XAIExplainLib.mrml``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.explainLogic = XAIExplainLogic()
        #: The chart node of the last test shown (put into the layout by the Widget).
        self.lastChartNode = None

    def getParameterNode(self):
        return XAIRobustnessParameterNode(super().getParameterNode())

    def severities(self, parameters) -> list:
        return list(range(0, parameters.maxSeverity + 1))

    # Each test is split in two: ``work(progress, cancel)`` computes from copies made on the main thread and
    # never touches the scene (it runs in a background thread), ``show(result)`` puts the result into the
    # scene (main thread). ``run*`` does both in turn, for scripts and tests.

    def backgroundTask(self, kind: str, parameters, **options):
        """``(work, show)`` of ``kind`` ("sweep", "sanity" or "faithfulness") on the current parameters."""
        tasks = {"sweep": self._sweepTask, "sanity": self._sanityTask, "faithfulness": self._faithfulnessTask}
        if kind not in tasks:
            raise ValueError(f"unknown robustness task {kind!r}")
        return tasks[kind](parameters, **options)

    def runSweep(self, parameters, progress=None, cancel=None):
        """Perturb, predict and explain at each severity; show the table, the curves and the most
        severe perturbed case with its saliency. Returns the sweep table node."""
        work, show = self._sweepTask(parameters)
        return show(work(progress, cancel))

    def runSanity(self, parameters, methods=None, seed: int = 0, progress=None, cancel=None):
        """Model-parameter randomisation check (Adebayo et al. 2018) of ``methods`` (default: the chosen
        method) on the input; a table and a chart of the similarity curves. Returns ``(results, tableNode)``:
        ``results[method].passed`` and ``.verdict`` say whether the explanation depends on the model."""
        work, show = self._sanityTask(parameters, methods=methods, seed=seed)
        return show(work(progress, cancel))

    def runFaithfulness(self, parameters, steps: int = 20, seed: int = 0, progress=None, cancel=None):
        """Deletion / insertion curves (Petsiuk et al. 2018) of the chosen method against random orderings;
        a table and a chart. Returns ``(result, tableNode)``."""
        work, show = self._faithfulnessTask(parameters, steps=steps, seed=seed)
        return show(work(progress, cancel))

    def _sweepTask(self, parameters):
        from XAIRobustnessLib.sweep import perturbation_sweep
        from XAIRobustnessLib.sweepNodes import showPerturbedCase, showSweep

        image, modelName, trust, inputVolume = self._inputs(parameters)
        perturbation, method, severities = parameters.perturbation.value, parameters.method.value, self.severities(parameters)
        opacity, threshold = parameters.opacity, parameters.threshold

        def work(progress, cancel):
            return perturbation_sweep(image, self._loadModel(modelName, trust), perturbation=perturbation,
                                      severities=severities, method=method, progress=progress, cancel=cancel)

        def show(sweep):
            scene = inputVolume.GetScene()
            tableNode, self.lastChartNode = showSweep(scene, inputVolume, perturbation, sweep.rows)
            worst = max(severities)
            perturbedNode, _nodes = showPerturbedCase(scene, inputVolume, perturbation, sweep.perturbed_images[worst],
                                                      sweep.results[worst], method, opacity=opacity,
                                                      threshold=threshold)
            parameters.outputTable = tableNode
            parameters.outputPerturbed = perturbedNode
            return tableNode

        return work, show

    def _sanityTask(self, parameters, methods=None, seed: int = 0):
        from XAIRobustnessLib.sanity import sanity_checks
        from XAIRobustnessLib.sweepNodes import showSanity

        image, modelName, trust, inputVolume = self._inputs(parameters)
        methods = list(methods or [parameters.method.value])

        def work(progress, cancel):
            return sanity_checks(image, self._loadModel(modelName, trust), methods, seed=seed, progress=progress,
                                 cancel=cancel)

        def show(results):
            tableNode, self.lastChartNode = showSanity(inputVolume.GetScene(), inputVolume, results)
            return results, tableNode

        return work, show

    def _faithfulnessTask(self, parameters, steps: int = 20, seed: int = 0):
        from XAIRobustnessLib.faithfulness import faithfulness_test
        from XAIRobustnessLib.sweepNodes import showFaithfulness

        image, modelName, trust, inputVolume = self._inputs(parameters)
        method = parameters.method.value

        def work(progress, cancel):
            return faithfulness_test(image, self._loadModel(modelName, trust), method, steps=steps, seed=seed,
                                     progress=progress, cancel=cancel)

        def show(result):
            tableNode, self.lastChartNode = showFaithfulness(inputVolume.GetScene(), inputVolume, result)
            return result, tableNode

        return work, show

    def showChartInLayout(self, chartNode=None) -> None:
        """Show ``chartNode`` (default: the last test's chart) in a plot view of the layout, switching to a
        layout that has one, as ``slicer.util.plot`` does. Needs the Slicer application."""
        chartNode = chartNode or self.lastChartNode
        if chartNode is not None and hasattr(slicer, "app"):
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)

    def computeLocalisation(self, saliencyNode, referenceNode):
        """Ground-truth metrics of the shown explanation: pointing game, share of positive attribution
        mass in the reference (against its share of the body), AUPRC and top-k IoU
        (``XAIRobustnessLib.localisation``). ``referenceNode``: a segmentation or label map of the case.
        Returns ``(scores, tableNode)``."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIRobustnessLib.localisation import localisation_scores
        from XAIRobustnessLib.sweepNodes import showLocalisation

        if saliencyNode is None:
            raise ValueError(_("Run an explanation first: there is no saliency map to measure."))
        scene = saliencyNode.GetScene()
        inputNode = saliencyNode.GetNodeReference(mrml.results.SOURCE_REFERENCE)
        saliency = mrml.volumeNodeToImage(saliencyNode, sitk.sitkFloat32)
        lesion = mrml.referenceMaskImage(scene, referenceNode, saliencyNode)
        image = mrml.volumeNodeToImage(inputNode, sitk.sitkFloat32) if inputNode is not None else None
        if image is not None and not mrml.sameGrid(image, saliencyNode):
            image = None  # the body is then the whole grid
        if not sitk.GetArrayViewFromImage(lesion).any():
            raise ValueError(_("The reference segmentation is empty on this image: there is no lesion to measure against."))
        scores = localisation_scores(saliency, lesion, image)
        return scores, showLocalisation(scene, saliencyNode, referenceNode, scores)

    @staticmethod
    def _inputs(parameters):
        """What a background task needs, read on the main thread: a copy of the input image, the model name,
        the trust flag, and the input node (for showing the result)."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml

        if parameters.inputVolume is None:
            raise ValueError(_("Select an input volume."))
        image = mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32)
        return image, parameters.model, parameters.trustModel, parameters.inputVolume

    @staticmethod
    def _loadModel(model: str, trust: bool):
        from XAIExplainLib.models import load_model

        return load_model(model, trust_bundle=trust)


#
# XAIRobustnessTest
#


class XAIRobustnessTest(ScriptedLoadableModuleTest):
    """A short noise sweep with the bundled model on the bundled sample case."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NoiseSweep()

    def test_NoiseSweep(self):
        self.delayDisplay(_("Running a noise sweep on the sample case"))
        logic = XAIRobustnessLogic()
        logic.explainLogic.ensureDependencies(askConfirmation=False)
        parameters = logic.getParameterNode()
        parameters.inputVolume = logic.explainLogic.loadSampleCase()
        parameters.model = SAMPLE_MODEL_NAME
        parameters.perturbation = Perturbation.GAUSSIAN_NOISE
        parameters.maxSeverity = 2
        tableNode = logic.runSweep(parameters)
        self.assertEqual(tableNode.GetNumberOfRows(), 3)
        self.assertIsNotNone(parameters.outputPerturbed)
        numberOfNodes = slicer.mrmlScene.GetNumberOfNodes()
        logic.runSweep(parameters)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), numberOfNodes)
        self.delayDisplay(_("Test passed"))
