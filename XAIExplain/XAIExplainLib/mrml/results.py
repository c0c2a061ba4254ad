"""Engine results into the scene: result nodes named, replaced, described and shown.

An engine result (``XAIExplainLib.pipeline.explain_image``, or the files a background run wrote, see
:class:`ExplanationOutputs`) has ``saliency``, ``uncertainty``, ``segmentation`` (SimpleITK images on
the input's grid, the last two optional), ``prediction`` and ``provenance`` (dicts).

Each result node refers to its input (node reference ``XAI.source``) and says what it is (attribute
``XAI.role``, plus ``XAI.method`` for saliency). That is how a re-run finds the nodes of the earlier
run and refills them instead of adding new ones, also after the scene was saved and loaded again.
"""

import colorsys
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk

import slicer

from ..audiences.presets import LESION_OUTLINE
from ..review import review_regions
from .colors import REVIEW_LABEL
from .display import (
    configureReviewDisplay,
    configureSaliencyDisplay,
    configureUncertaintyDisplay,
    showInSliceViews,
)
from .geometry import copyGeometry, imageToVolumeNode, sameGrid, volumeNodeToImage, volumeNodeToImageGeometry
from .hierarchy import placeBesideInput
from .provenance import setProvenanceAttributes

__all__ = [
    "ExplanationOutputs",
    "ExplanationNodes",
    "applyExplanationResult",
    "findResultNode",
    "removeResultNode",
    "resultNodeName",
    "reviewRegions",
    "referenceMaskImage",
    "showReferenceSegmentation",
    "SOURCE_REFERENCE",
]

SOURCE_REFERENCE = "XAI.source"
ROLE_ATTRIBUTE = "XAI.role"


@dataclass
class ExplanationOutputs:
    """The parts of an engine result this module uses (what a background run hands back)."""

    saliency: sitk.Image
    uncertainty: Optional[sitk.Image] = None
    segmentation: Optional[sitk.Image] = None
    prediction: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


@dataclass
class ExplanationNodes:
    """The nodes that hold one explanation."""

    saliency: object
    uncertainty: object = None
    review: object = None
    segmentation: object = None
    compositeNodes: list = field(default_factory=list)


def resultNodeName(inputNode, role: str, method: str = "") -> str:
    """The name a result gets: ``<input> <method> saliency``, ``<input> uncertainty``, ..."""
    words = {
        "saliency": f"{method} saliency",
        "uncertainty": "uncertainty",
        "review": "uncertainty review",
        "segmentation": "model segmentation",
        "reference": "reference segmentation",
    }
    return f"{inputNode.GetName()} {words[role]}"


def findResultNode(scene, inputNode, role: str, method: Optional[str] = None):
    """The node holding ``role`` (and ``method``) of an earlier run on ``inputNode``, or None."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) != role or node.GetNodeReference(SOURCE_REFERENCE) is not inputNode:
            continue
        if method is None or node.GetAttribute("XAI.method") == method:
            return node
    return None


def removeResultNode(scene, node) -> None:
    """Remove ``node`` with its display and storage nodes (a bare scene does not do it for us)."""
    if node is None:
        return
    companions = []
    if node.IsA("vtkMRMLDisplayableNode"):
        companions += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        companions += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for companion in companions:
        if companion is not None and scene.IsNodePresent(companion):
            scene.RemoveNode(companion)


def reviewRegions(uncertainty: sitk.Image, percentile: float = 90.0) -> tuple:
    """The engine's review regions (:func:`XAIExplainLib.review.review_regions`) as a label image whose
    voxels are ``REVIEW_LABEL``, with the threshold used."""
    mask, threshold = review_regions(uncertainty, percentile)
    return mask * REVIEW_LABEL, threshold


def applyExplanationResult(
    scene,
    inputNode,
    result,
    method: str,
    opacity: float = 0.5,
    threshold: float = 0.2,
    reviewPercentile: float = 90.0,
    show: bool = True,
) -> ExplanationNodes:
    """Create or refill the result nodes of ``result`` (computed on ``inputNode``) and show them.

    Raises ValueError when a map is not on the input's grid (nothing is changed in the scene then).
    """
    for role in ("saliency", "uncertainty", "segmentation"):
        image = getattr(result, role, None)
        if image is not None and not sameGrid(image, inputNode):
            raise ValueError(f"The {role} map is not on the grid of {inputNode.GetName()}; it cannot be overlaid.")
    provenance = dict(getattr(result, "provenance", None) or {})
    prediction = dict(getattr(result, "prediction", None) or {})

    nodes = ExplanationNodes(saliency=None)
    nodes.saliency = _storeMap(scene, inputNode, result.saliency, "saliency", method)
    configureSaliencyDisplay(nodes.saliency, threshold)
    _describe(nodes.saliency, provenance, prediction)

    previousUncertainty = findResultNode(scene, inputNode, "uncertainty")
    previousReview = findResultNode(scene, inputNode, "review")
    if result.uncertainty is not None:
        nodes.uncertainty = _storeMap(scene, inputNode, result.uncertainty, "uncertainty", method)
        configureUncertaintyDisplay(nodes.uncertainty)
        _describe(nodes.uncertainty, provenance, prediction)
        label, reviewThreshold = reviewRegions(result.uncertainty, reviewPercentile)
        nodes.review = _storeMap(scene, inputNode, label, "review", method, "vtkMRMLLabelMapVolumeNode")
        configureReviewDisplay(nodes.review)
        _describe(nodes.review, provenance, prediction)
        nodes.review.SetAttribute("XAI.reviewPercentile", repr(float(reviewPercentile)))
        nodes.review.SetAttribute("XAI.reviewThreshold", repr(reviewThreshold))
        nodes.review.SetAttribute("XAI.reviewVoxelCount", str(int(np.count_nonzero(sitk.GetArrayViewFromImage(label)))))
    else:
        # A map from an earlier run would no longer match the saliency shown: drop it.
        removeResultNode(scene, previousUncertainty)
        removeResultNode(scene, previousReview)

    previousSegmentation = findResultNode(scene, inputNode, "segmentation")
    if getattr(result, "segmentation", None) is not None:
        nodes.segmentation = _storeSegmentation(scene, inputNode, result.segmentation, prediction, previousSegmentation)
        _describe(nodes.segmentation, provenance, prediction)
    else:
        removeResultNode(scene, previousSegmentation)

    if show:
        nodes.compositeNodes = showInSliceViews(scene, inputNode, nodes.saliency, nodes.review, opacity)
    return nodes


def _storeMap(scene, inputNode, image, role, method, className="vtkMRMLScalarVolumeNode"):
    node = findResultNode(scene, inputNode, role, method if role == "saliency" else None)
    name = resultNodeName(inputNode, role, method)
    if node is None:
        node = imageToVolumeNode(scene, image, name, className=className)
    else:
        imageToVolumeNode(scene, image, name, node=node)
        if node.GetName() != name:
            node.SetName(scene.GenerateUniqueName(name))
    # The engine promises the input's grid; copying it makes the overlay exact even after a trip
    # through a file header, and puts the map under the input's transform.
    copyGeometry(inputNode, node)
    node.SetNodeReferenceID(SOURCE_REFERENCE, inputNode.GetID())
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute("XAI.method", method)
    placeBesideInput(scene, inputNode, node)
    return node


def showReferenceSegmentation(scene, inputNode, maskImage: sitk.Image, name: str = "reference lesion"):
    """Show a ground-truth mask of ``inputNode`` as an outline (teaching; per-case metrics).

    Any voxel > 0 belongs to the reference; re-showing replaces the earlier reference.
    """
    if not sameGrid(maskImage, inputNode):
        maskImage = sitk.Resample(maskImage, _emptyGridOf(inputNode), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    binary = sitk.Cast(maskImage > 0, sitk.sitkUInt8)
    node = _storeSegmentation(scene, inputNode, binary, {"class_names": ["", name]},
                              findResultNode(scene, inputNode, "reference"), role="reference")
    display = node.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(2)
    segment = node.GetSegmentation().GetNthSegment(0) if node.GetSegmentation().GetNumberOfSegments() else None
    if segment is not None:
        segment.SetColor(*LESION_OUTLINE["rgb"])
    return node


def referenceMaskImage(scene, referenceNode, onNode) -> sitk.Image:
    """A ground truth given as a segmentation or label-map node, as a 0/1 mask on ``onNode``'s grid
    (nearest-neighbour: any voxel of any segment or label > 0 is inside)."""
    if referenceNode is None:
        raise ValueError("Select the reference segmentation (ground truth) of the case.")
    if referenceNode.IsA("vtkMRMLSegmentationNode"):
        labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "XAI temporary reference")
        try:
            slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
                referenceNode, labelNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            labels = volumeNodeToImage(labelNode)
        finally:
            removeResultNode(scene, labelNode)
    elif referenceNode.IsA("vtkMRMLScalarVolumeNode"):
        labels = volumeNodeToImage(referenceNode)
    else:
        raise ValueError(f"{referenceNode.GetName()} is neither a segmentation nor a label map.")
    return sitk.Resample(sitk.Cast(labels > 0, sitk.sitkUInt8), _emptyGridOf(onNode), sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0)


def _emptyGridOf(volumeNode) -> sitk.Image:
    geometry = volumeNodeToImageGeometry(volumeNode)
    grid = sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8)
    grid.SetSpacing(geometry["spacing"].tolist())
    grid.SetOrigin(geometry["origin"].tolist())
    grid.SetDirection(geometry["direction"].tolist())
    return grid


def _storeSegmentation(scene, inputNode, labelImage, prediction, segmentationNode, role="segmentation"):
    # Label value -> name: the class index, or for multi-label outputs the structure + 1 (0: none).
    classNames = list(prediction.get("label_names") or prediction.get("class_names") or [])
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(resultNodeName(inputNode, role))
        )
        segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.GetSegmentation().RemoveAllSegments()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputNode)
    # Import goes through a temporary label map whose colour table names the segments.
    labelNode = imageToVolumeNode(scene, sitk.Cast(labelImage, sitk.sitkUInt8), "XAI temporary labels",
                                  className="vtkMRMLLabelMapVolumeNode")
    copyGeometry(inputNode, labelNode)
    labelNode.SetAndObserveTransformNodeID(None)
    values = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(labelImage)) if v > 0)
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "XAI temporary label names")
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors((max(values) if values else 0) + 1)
    for value in values:
        name = classNames[value] if value < len(classNames) else f"Label {value}"
        red, green, blue = _distinctColor(value)
        colorNode.SetColor(value, name, red, green, blue, 1.0)
    labelNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode)
    removeResultNode(scene, labelNode)
    removeResultNode(scene, colorNode)
    segmentationNode.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
    segmentationNode.SetNodeReferenceID(SOURCE_REFERENCE, inputNode.GetID())
    segmentationNode.SetAttribute(ROLE_ATTRIBUTE, role)
    placeBesideInput(scene, inputNode, segmentationNode)
    return segmentationNode


def _distinctColor(value: int) -> tuple:
    # Golden-angle hues: neighbouring labels get well-separated colours.
    return colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 0.95)


def _describe(node, provenance: dict, prediction: dict) -> None:
    setProvenanceAttributes(node, provenance)
    if prediction:
        node.SetAttribute("XAI.prediction", json.dumps(prediction, sort_keys=True, default=float))
        for key in ("predicted_label", "confidence", "task"):
            if key in prediction:
                value = prediction[key]
                node.SetAttribute("XAI." + {"predicted_label": "predictedLabel"}.get(key, key),
                                  value if isinstance(value, str) else json.dumps(value, default=float))
