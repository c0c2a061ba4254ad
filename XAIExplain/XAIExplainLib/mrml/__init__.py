"""MRML glue: engine images and results into a Slicer scene, and back.

Pure MRML (``slicer`` MRML classes, vtk, NumPy, SimpleITK): the scene is always an argument, nothing
here needs the desktop application, Qt or ``slicer.mrmlScene``. The same functions serve the desktop
modules, the web viewer (trame-slicer) and the tests (slicer-core).
"""

from .colors import REVIEW_LABEL, reviewColorNode, saliencyColorNode, uncertaintyColorNode
from .display import (
    configureReviewDisplay,
    configureSaliencyDisplay,
    configureUncertaintyDisplay,
    setForegroundOpacity,
    setSaliencyThreshold,
    showInSliceViews,
    sliceCompositeNodesShowing,
)
from .geometry import copyGeometry, imageToVolumeNode, sameGrid, volumeNodeToImage, volumeNodeToImageGeometry
from .hierarchy import placeBesideInput
from .plots import findPlotNodes, showCurves
from .provenance import attributeName, getProvenance, setProvenanceAttributes
from .results import (
    ExplanationNodes,
    ExplanationOutputs,
    applyExplanationResult,
    findResultNode,
    removeResultNode,
    resultNodeName,
    reviewRegions,
    referenceMaskImage,
    showReferenceSegmentation,
)

__all__ = [
    "REVIEW_LABEL",
    "ExplanationNodes",
    "ExplanationOutputs",
    "applyExplanationResult",
    "attributeName",
    "configureReviewDisplay",
    "configureSaliencyDisplay",
    "configureUncertaintyDisplay",
    "copyGeometry",
    "findPlotNodes",
    "findResultNode",
    "getProvenance",
    "imageToVolumeNode",
    "placeBesideInput",
    "removeResultNode",
    "resultNodeName",
    "reviewColorNode",
    "reviewRegions",
    "saliencyColorNode",
    "sameGrid",
    "setForegroundOpacity",
    "setProvenanceAttributes",
    "setSaliencyThreshold",
    "showCurves",
    "showInSliceViews",
    "referenceMaskImage",
    "showReferenceSegmentation",
    "sliceCompositeNodesShowing",
    "uncertaintyColorNode",
    "volumeNodeToImage",
    "volumeNodeToImageGeometry",
]
