"""Volume node <-> SimpleITK image, with the exact geometry.

Slicer keeps a volume's grid as origin, spacing and IJK->RAS directions in RAS; ITK (and SimpleITK)
keep origin, spacing and direction in LPS. The two frames differ by the sign of the first two axes,
so the conversion is a sign flip, which is exact in floating point: a round trip gives back the same
bits, for oblique directions and anisotropic spacing alike. ``slicer.util.arrayFromVolume`` returns
the voxels as (k, j, i), which is the axis order ``sitk.GetImageFromArray`` expects.
"""

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

__all__ = ["volumeNodeToImage", "imageToVolumeNode", "copyGeometry", "sameGrid", "volumeNodeToImageGeometry"]

# RAS <-> LPS: negate x and y.
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def volumeNodeToImage(volumeNode, pixelType=None) -> sitk.Image:
    """The voxels and grid of ``volumeNode`` as a SimpleITK image (a copy, in LPS).

    The node's own grid is used; a parent transform, if any, is not applied (results are put under
    the same transform, see :func:`imageToVolumeNode` callers). ``pixelType`` (e.g.
    ``sitk.sitkFloat32``) casts the voxels; by default the node's scalar type is kept.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("The volume node has no image data.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"{volumeNode.GetName()} has more than one value per voxel; a scalar volume is needed.")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    image = sitk.GetImageFromArray(array)
    geometry = volumeNodeToImageGeometry(volumeNode)
    image.SetSpacing([float(x) for x in geometry["spacing"]])
    image.SetOrigin([float(x) for x in geometry["origin"]])
    image.SetDirection([float(x) for x in geometry["direction"]])
    if pixelType is not None:
        image = sitk.Cast(image, pixelType)
    return image


def imageToVolumeNode(scene, image: sitk.Image, name: str, node=None, className="vtkMRMLScalarVolumeNode"):
    """Put ``image`` (voxels and grid) into ``node``, or into a new node of ``className`` named ``name``.

    Returns the node. A new node gets default display nodes; an existing node keeps its own display
    settings and name (its voxels and grid are replaced).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("Only 3-D scalar images can be put into a volume node.")
    if node is None:
        node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    array = sitk.GetArrayFromImage(image)
    # Grid first, then voxels: updateVolumeFromArray keeps the node's geometry.
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3) * _RAS_TO_LPS[:, np.newaxis]
    directionsRAS = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directionsRAS.SetElement(r, c, direction[r, c])
    wasModifying = node.StartModify()
    node.SetIJKToRASDirectionMatrix(directionsRAS)
    node.SetSpacing(*[float(s) for s in image.GetSpacing()])
    node.SetOrigin(*[float(x) for x in np.array(image.GetOrigin(), dtype=float) * _RAS_TO_LPS])
    slicer.util.updateVolumeFromArray(node, array)
    node.EndModify(wasModifying)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def copyGeometry(sourceNode, targetNode) -> None:
    """Give ``targetNode`` the grid and parent transform of ``sourceNode`` (voxels untouched)."""
    # Component by component: SetIJKToRASMatrix would recompute spacing from column norms (not exact).
    directions = vtk.vtkMatrix4x4()
    sourceNode.GetIJKToRASDirectionMatrix(directions)
    wasModifying = targetNode.StartModify()
    targetNode.SetIJKToRASDirectionMatrix(directions)
    targetNode.SetSpacing(sourceNode.GetSpacing())
    targetNode.SetOrigin(sourceNode.GetOrigin())
    targetNode.SetAndObserveTransformNodeID(sourceNode.GetTransformNodeID())
    targetNode.EndModify(wasModifying)


def sameGrid(image: sitk.Image, volumeNode, tolerance: float = 1e-4) -> bool:
    """Whether ``image`` lies on the grid of ``volumeNode`` (size exact; spacing, origin, direction
    within ``tolerance`` mm or cosine, enough to absorb a trip through a text file header)."""
    reference = volumeNodeToImageGeometry(volumeNode)
    if tuple(image.GetSize()) != reference["size"]:
        return False
    return all(
        np.allclose(np.asarray(getattr(image, getter)()), reference[key], rtol=0, atol=tolerance)
        for key, getter in (("spacing", "GetSpacing"), ("origin", "GetOrigin"), ("direction", "GetDirection"))
    )


def volumeNodeToImageGeometry(volumeNode) -> dict:
    """The LPS grid of ``volumeNode`` as SimpleITK would state it (size, spacing, origin, direction)."""
    directionsRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(directionsRAS)
    direction = np.array([[directionsRAS.GetElement(r, c) for c in range(3)] for r in range(3)])
    return {
        "size": tuple(volumeNode.GetImageData().GetDimensions()),
        "spacing": np.array(volumeNode.GetSpacing(), dtype=float),
        "origin": np.array(volumeNode.GetOrigin(), dtype=float) * _RAS_TO_LPS,
        "direction": (direction * _RAS_TO_LPS[:, np.newaxis]).ravel(),
    }
