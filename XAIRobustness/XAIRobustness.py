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

# XAIExplain is a dependency of this module: its choices, model list and dependency installer are reused.
from XAIExplain import SAMPLE_MODEL_NAME, ExplanationMethod, XAIExplainLogic

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
        self._cancelToken = None

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
        if self._cancelToken:
            self._cancelToken.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._cancelToken:
            self._cancelToken.cancel()
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

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._cancelToken:
            return
        if self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.model:
            self.ui.applyButton.toolTip = _("Perturb the case at each severity and re-run model and explanation.")
            self.ui.applyButton.enabled = True
            self.ui.sanityButton.enabled = self._cancelToken is None
            self.ui.faithfulnessButton.enabled = self._cancelToken is None
            self.ui.localisationButton.enabled = self._parameterNode.reference is not None
        else:
            self.ui.applyButton.toolTip = _("Select an input volume and a model.")
            self.ui.applyButton.enabled = False
            self.ui.sanityButton.enabled = False
            self.ui.faithfulnessButton.enabled = False
            self.ui.localisationButton.enabled = False

    def onApplyButton(self) -> None:
        self._runLong(lambda progress, cancel: self.logic.runSweep(self._parameterNode, progress=progress, cancel=cancel),
                      _("The robustness sweep failed."))

    def onSanityButton(self) -> None:
        self._runLong(lambda progress, cancel: self.logic.runSanity(self._parameterNode, progress=progress, cancel=cancel),
                      _("The sanity check failed."))

    def onFaithfulnessButton(self) -> None:
        self._runLong(lambda progress, cancel: self.logic.runFaithfulness(self._parameterNode, progress=progress,
                                                                          cancel=cancel),
                      _("The faithfulness test failed."))

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

    def _runLong(self, work, failureMessage: str) -> None:
        """Run ``work(progress, cancel)`` with the progress bar; Apply becomes Cancel meanwhile."""
        if self._cancelToken:
            self._cancelToken.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=False):
            if not self.logic.explainLogic.ensureDependencies(askConfirmation=True):
                return
            from XAIExplainLib.errors import XAICancelled
            from XAIExplainLib.progress import CancelToken

            self._cancelToken = CancelToken()
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = True
            self.ui.sanityButton.enabled = self.ui.faithfulnessButton.enabled = False
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            try:
                work(self._onProgress, self._cancelToken)
                self.ui.statusLabel.text = _("Done.")
            except XAICancelled:
                self.ui.statusLabel.text = _("Cancelled; no results were kept.")
            finally:
                self._cancelToken = None
                self.ui.applyButton.text = _("Apply")
                self.ui.progressBar.hide()
                self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        # Called between units of engine work: keeping the event loop going keeps the GUI (and the
        # Cancel button) responsive during the sweep.
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()


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

    def getParameterNode(self):
        return XAIRobustnessParameterNode(super().getParameterNode())

    def severities(self, parameters) -> list:
        return list(range(0, parameters.maxSeverity + 1))

    def runSweep(self, parameters, progress=None, cancel=None):
        """Perturb, predict and explain at each severity; show the table, the curves and the most
        severe perturbed case with its saliency. Returns the sweep table node."""
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIExplainLib.models import load_model
        from XAIRobustnessLib.sweep import perturbation_sweep
        from XAIRobustnessLib.sweepNodes import showPerturbedCase, showSweep

        inputVolume = parameters.inputVolume
        if inputVolume is None:
            raise ValueError(_("Select an input volume."))
        scene = inputVolume.GetScene()
        image = mrml.volumeNodeToImage(inputVolume, sitk.sitkFloat32)
        model = load_model(parameters.model, trust_bundle=parameters.trustModel)
        sweep = perturbation_sweep(image, model, perturbation=parameters.perturbation.value,
                                   severities=self.severities(parameters), method=parameters.method.value,
                                   progress=progress, cancel=cancel)
        tableNode, _chartNode = showSweep(scene, inputVolume, parameters.perturbation.value, sweep.rows)
        worst = max(self.severities(parameters))
        perturbedNode, _nodes = showPerturbedCase(
            scene, inputVolume, parameters.perturbation.value, sweep.perturbed_images[worst], sweep.results[worst],
            parameters.method.value, opacity=parameters.opacity, threshold=parameters.threshold)
        parameters.outputTable = tableNode
        parameters.outputPerturbed = perturbedNode
        return tableNode

    def runSanity(self, parameters, methods=None, seed: int = 0, progress=None, cancel=None):
        """Model-parameter randomisation check (Adebayo et al. 2018) of ``methods`` (default: the chosen
        method) on the input; a table and a chart of the similarity curves. Returns ``(results, tableNode)``:
        ``results[method].passed`` and ``.verdict`` say whether the explanation depends on the model."""
        from XAIRobustnessLib.sanity import sanity_checks
        from XAIRobustnessLib.sweepNodes import showSanity

        image, model = self._imageAndModel(parameters)
        results = sanity_checks(image, model, list(methods or [parameters.method.value]), seed=seed,
                                progress=progress, cancel=cancel)
        tableNode, _chartNode = showSanity(parameters.inputVolume.GetScene(), parameters.inputVolume, results)
        return results, tableNode

    def runFaithfulness(self, parameters, steps: int = 20, seed: int = 0, progress=None, cancel=None):
        """Deletion / insertion curves (Petsiuk et al. 2018) of the chosen method against random orderings;
        a table and a chart. Returns ``(result, tableNode)``."""
        from XAIRobustnessLib.faithfulness import faithfulness_test
        from XAIRobustnessLib.sweepNodes import showFaithfulness

        image, model = self._imageAndModel(parameters)
        result = faithfulness_test(image, model, parameters.method.value, steps=steps, seed=seed,
                                   progress=progress, cancel=cancel)
        tableNode, _chartNode = showFaithfulness(parameters.inputVolume.GetScene(), parameters.inputVolume, result)
        return result, tableNode

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

    def _imageAndModel(self, parameters):
        import SimpleITK as sitk

        from XAIExplainLib import mrml
        from XAIExplainLib.models import load_model

        if parameters.inputVolume is None:
            raise ValueError(_("Select an input volume."))
        return mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32), load_model(parameters.model, trust_bundle=parameters.trustModel)


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
