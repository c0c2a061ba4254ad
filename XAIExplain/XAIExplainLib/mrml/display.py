"""How the maps look: colour, window, threshold, and the slice-view layers.

In every slice view that shows the input as background, the saliency map becomes the foreground
(with the chosen opacity) and the uncertainty review regions the label layer, drawn as outlines so the
anatomy under them stays visible.
"""

import numpy as np

import slicer

from .colors import reviewColorNode, saliencyColorNode, uncertaintyColorNode

__all__ = [
    "configureSaliencyDisplay",
    "configureUncertaintyDisplay",
    "configureReviewDisplay",
    "setSaliencyThreshold",
    "showInSliceViews",
    "setForegroundOpacity",
    "sliceCompositeNodesShowing",
]


def configureSaliencyDisplay(saliencyNode, threshold: float) -> None:
    """Heat-map colours; voxels below ``threshold`` (fraction 0..1 of the map's range) transparent."""
    displayNode = _displayNode(saliencyNode)
    displayNode.SetAndObserveColorNodeID(saliencyColorNode(saliencyNode.GetScene()).GetID())
    displayNode.SetInterpolate(True)
    setSaliencyThreshold(saliencyNode, threshold)


def setSaliencyThreshold(saliencyNode, threshold: float) -> None:
    """Hide saliency below ``threshold`` of its range; the colours span the visible part only.

    The heat map shows evidence *for* the target: for signed maps (Integrated Gradients, occlusion)
    the range starts at zero, so negative values (evidence against) stay transparent.
    """
    low, high = _range(saliencyNode)
    if high > 0:
        low = max(low, 0.0)
    threshold = min(max(float(threshold), 0.0), 1.0)
    lower = low + threshold * (high - low)
    displayNode = _displayNode(saliencyNode)
    wasModifying = displayNode.StartModify()
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(lower, max(high, lower + 1e-6))
    displayNode.AutoThresholdOff()
    displayNode.SetApplyThreshold(True)
    # A strictly positive lower bound keeps an all-zero background transparent at threshold 0 too.
    displayNode.SetThreshold(lower if threshold > 0 else low + 1e-6 * (high - low), high)
    displayNode.EndModify(wasModifying)
    saliencyNode.SetAttribute("XAI.displayThreshold", repr(threshold))


def configureUncertaintyDisplay(uncertaintyNode) -> None:
    """Cividis over the map's full range (shown only when the user picks it)."""
    displayNode = _displayNode(uncertaintyNode)
    low, high = _range(uncertaintyNode)
    wasModifying = displayNode.StartModify()
    displayNode.SetAndObserveColorNodeID(uncertaintyColorNode(uncertaintyNode.GetScene()).GetID())
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(low, max(high, low + 1e-6))
    displayNode.SetInterpolate(True)
    displayNode.EndModify(wasModifying)


def configureReviewDisplay(reviewNode) -> None:
    """The review label map's colour table."""
    _displayNode(reviewNode).SetAndObserveColorNodeID(reviewColorNode(reviewNode.GetScene()).GetID())


def sliceCompositeNodesShowing(scene, volumeNode) -> list:
    """Slice composite nodes whose background is ``volumeNode``."""
    return [
        node for node in _compositeNodes(scene)
        if volumeNode is not None and node.GetBackgroundVolumeID() == volumeNode.GetID()
    ]


def showInSliceViews(scene, inputNode, foregroundNode=None, labelNode=None, opacity: float = 0.5) -> list:
    """Layer the results over ``inputNode`` in the slice views; return the composite nodes changed.

    Views showing ``inputNode`` as background are used; if none does, every slice view is made to
    show it (as Slicer does when a volume is loaded). Slice views of the same layout also draw label
    maps as outlines.
    """
    compositeNodes = sliceCompositeNodesShowing(scene, inputNode) or _compositeNodes(scene)
    for compositeNode in compositeNodes:
        wasModifying = compositeNode.StartModify()
        compositeNode.SetBackgroundVolumeID(inputNode.GetID())
        compositeNode.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode else None)
        compositeNode.SetForegroundOpacity(float(opacity))
        compositeNode.SetLabelVolumeID(labelNode.GetID() if labelNode else None)
        compositeNode.SetLabelOpacity(1.0)
        compositeNode.EndModify(wasModifying)
        sliceNode = _sliceNodeOfLayout(scene, compositeNode.GetLayoutName())
        if sliceNode is not None and labelNode is not None:
            sliceNode.SetUseLabelOutline(True)
    return compositeNodes


def setForegroundOpacity(scene, inputNode, opacity: float) -> None:
    """Change the foreground opacity in the views showing ``inputNode`` (live slider updates)."""
    for compositeNode in sliceCompositeNodesShowing(scene, inputNode):
        compositeNode.SetForegroundOpacity(float(opacity))


def _compositeNodes(scene) -> list:
    return [
        scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def _sliceNodeOfLayout(scene, layoutName):
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        if node.GetLayoutName() == layoutName:
            return node
    return None


def _displayNode(volumeNode):
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    return volumeNode.GetDisplayNode()


def _range(volumeNode) -> tuple:
    array = slicer.util.arrayFromVolume(volumeNode)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())
