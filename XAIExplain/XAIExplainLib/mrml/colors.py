"""Colour tables for the maps the engine returns.

Saliency: a perceptually uniform heat map (Inferno), starting above its near-black end so that the
weakest visible values still stand out over grey anatomy; voxels below the display threshold are made
transparent by the display node, not by the table. Uncertainty: Cividis (perceptually uniform, readable
with colour-vision deficiency, and unlike the saliency map, so the two are never confused). Review
regions: a two-entry label table (transparent background, cyan "review").

Slicer's own "Inferno" table is loaded from a file by the desktop Colors module and is absent from a
bare MRML scene (slicer-core, the web viewer), so the tables are built here: the same on every front
end, and saved with the scene.
"""

import numpy as np

__all__ = ["saliencyColorNode", "uncertaintyColorNode", "reviewColorNode", "REVIEW_LABEL"]

#: Label value of "review" voxels in the review-region label map.
REVIEW_LABEL = 1

_TABLE_ATTRIBUTE = "XAI.colorTable"

# Matplotlib's colormaps sampled at 9 evenly spaced points (linear interpolation in between).
_INFERNO = [
    (0.001, 0.000, 0.014), (0.129, 0.047, 0.291), (0.342, 0.062, 0.429), (0.541, 0.135, 0.415),
    (0.736, 0.216, 0.330), (0.894, 0.353, 0.194), (0.978, 0.558, 0.035), (0.975, 0.798, 0.206),
    (0.988, 0.998, 0.645),
]
_CIVIDIS = [
    (0.000, 0.135, 0.305), (0.103, 0.220, 0.436), (0.264, 0.308, 0.423), (0.381, 0.395, 0.436),
    (0.489, 0.485, 0.471), (0.609, 0.580, 0.464), (0.736, 0.681, 0.424), (0.871, 0.790, 0.343),
    (0.996, 0.909, 0.218),
]
_NUMBER_OF_COLORS = 256


def saliencyColorNode(scene):
    """The scene's saliency colour table (Inferno from 20 % to 100 %), created on first use."""
    return _continuousTable(scene, "saliency", "XAI Saliency (Inferno)", _INFERNO, start=0.2)


def uncertaintyColorNode(scene):
    """The scene's uncertainty colour table (Cividis), created on first use."""
    return _continuousTable(scene, "uncertainty", "XAI Uncertainty (Cividis)", _CIVIDIS, start=0.0)


def reviewColorNode(scene):
    """The scene's label table for uncertainty review regions, created on first use."""
    node = _findTable(scene, "review")
    if node is not None:
        return node
    node = _newTable(scene, "review", "XAI Review regions", REVIEW_LABEL + 1)
    node.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    node.SetColor(REVIEW_LABEL, "Review", 0.0, 0.9, 1.0, 1.0)
    return node


def _continuousTable(scene, key, name, controlPoints, start):
    node = _findTable(scene, key)
    if node is not None:
        return node
    node = _newTable(scene, key, name, _NUMBER_OF_COLORS)
    points = np.asarray(controlPoints)
    positions = np.linspace(0.0, 1.0, len(points))
    samples = np.linspace(start, 1.0, _NUMBER_OF_COLORS)
    rgb = np.stack([np.interp(samples, positions, points[:, channel]) for channel in range(3)], axis=1)
    for index, (red, green, blue) in enumerate(rgb):
        node.SetColor(index, "", float(red), float(green), float(blue), 1.0)
    return node


def _findTable(scene, key):
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetAttribute(_TABLE_ATTRIBUTE) == key:
            return node
    return None


def _newTable(scene, key, name, numberOfColors):
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(numberOfColors)
    node.SetAttribute(_TABLE_ATTRIBUTE, key)
    return node
