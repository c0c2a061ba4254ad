"""A perturbation sweep in the scene: one table row per severity, curves in a plot chart, and the
perturbed case with its saliency map layered like XAIExplain's results; the sanity, faithfulness and
ground-truth localisation results as tables."""

import numpy as np
import vtk

from XAIExplainLib import mrml

__all__ = ["sweepColumns", "showSweep", "showPerturbedCase", "showSanity", "showFaithfulness", "showLocalisation"]


def sweepColumns(rows: list) -> dict:
    """Rows (one dict per severity) as columns; numeric values only, ``severity`` first."""
    if not rows:
        raise ValueError("The sweep has no results.")
    names = ["severity"] + [key for key in rows[0] if key != "severity"]
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            columns[name] = [float(v) for v in values]
        elif name != "severity":
            columns[name] = [str(v) for v in values]
    if "severity" not in columns:
        raise ValueError("Every sweep row needs a numeric 'severity'.")
    return columns


def showSweep(scene, inputNode, perturbation: str, rows: list):
    """Table and chart of the sweep (numeric columns plotted against severity); refilled on re-runs."""
    columns = sweepColumns(rows)
    plotted = [name for name, values in columns.items() if name != "severity" and isinstance(values[0], float)]
    key = f"{inputNode.GetID()} {perturbation} sweep"
    tableNode, chartNode = mrml.showCurves(
        scene, key, columns, "severity", plotted,
        title=f"{inputNode.GetName()} {perturbation} sweep", xAxisTitle="severity", yAxisTitle="value",
    )
    tableNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, inputNode.GetID())
    return tableNode, chartNode


def showPerturbedCase(scene, inputNode, perturbation: str, perturbedImage, result, method: str,
                      opacity: float = 0.5, threshold: float = 0.2):
    """The perturbed image as a volume beside the input, with its explanation layered over it."""
    name = f"{inputNode.GetName()} {perturbation}"
    perturbedNode = mrml.findResultNode(scene, inputNode, "perturbed")
    if perturbedNode is None:
        perturbedNode = mrml.imageToVolumeNode(scene, perturbedImage, name)
    else:
        mrml.imageToVolumeNode(scene, perturbedImage, name, node=perturbedNode)
        perturbedNode.SetName(scene.GenerateUniqueName(name) if perturbedNode.GetName() != name else name)
    mrml.copyGeometry(inputNode, perturbedNode)
    perturbedNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, inputNode.GetID())
    perturbedNode.SetAttribute(mrml.results.ROLE_ATTRIBUTE, "perturbed")
    perturbedNode.SetAttribute("XAI.perturbation", perturbation)
    displayNode = perturbedNode.GetDisplayNode()
    inputDisplay = inputNode.GetDisplayNode()
    if inputDisplay is not None:
        # Same window as the input: a darker or noisier image must look darker or noisier.
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevel(inputDisplay.GetWindow(), inputDisplay.GetLevel())
    mrml.placeBesideInput(scene, inputNode, perturbedNode)
    nodes = mrml.applyExplanationResult(scene, perturbedNode, result, method, opacity=opacity, threshold=threshold)
    return perturbedNode, nodes


def showSanity(scene, inputNode, results: dict):
    """Randomisation curves (``XAIRobustnessLib.sanity`` results by method): similarity to the original
    map per step, one series per method; pass / fail as table attributes. Refilled on re-runs."""
    first = next(iter(results.values()))
    columns = {"step": [float(step["step"]) for step in first.steps],
               "randomised": [step["randomised"] for step in first.steps]}
    for method, result in results.items():
        columns[f"{method} spearman"] = [float(step["spearman"]) for step in result.steps]
    plotted = [name for name in columns if name.endswith(" spearman")]
    tableNode, chartNode = mrml.showCurves(
        scene, f"{inputNode.GetID()} sanity", columns, "step", plotted,
        title=f"{inputNode.GetName()} randomisation check", xAxisTitle="layers randomised, from the output side",
        yAxisTitle="Spearman with the original map",
    )
    tableNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, inputNode.GetID())
    for method, result in results.items():
        tableNode.SetAttribute(f"XAI.sanity.{method}", "pass" if result.passed else "fail")
        tableNode.SetAttribute(f"XAI.sanity.{method}.verdict", result.verdict)
    return tableNode, chartNode


def showFaithfulness(scene, inputNode, result):
    """Deletion and insertion curves (``XAIRobustnessLib.faithfulness`` result) against random orderings."""
    tableNode, chartNode = mrml.showCurves(
        scene, f"{inputNode.GetID()} faithfulness {result.method}", result.curve_columns(), "fraction",
        title=f"{inputNode.GetName()} {result.method} deletion / insertion", xAxisTitle="fraction of voxels changed",
        yAxisTitle="probability of the explained target",
    )
    tableNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, inputNode.GetID())
    tableNode.SetAttribute("XAI.faithfulness", "pass" if result.passed else "fail")
    tableNode.SetAttribute("XAI.faithfulness.verdict", result.verdict)
    return tableNode, chartNode


_LOCALISATION_ROWS = (
    ("pointing_hit", "pointing game (peak inside the reference)"),
    ("mass_in_lesion", "share of positive attribution inside"),
    ("lesion_share", "reference's share of the body (chance level)"),
    ("auprc", "AUPRC of the map as a lesion detector"),
    ("top_k_iou", "IoU of the top region (reference-sized)"),
)


def showLocalisation(scene, saliencyNode, referenceNode, scores):
    """A two-column table (metric, value) of ``scores`` against ``referenceNode``, refilled on re-runs."""
    name = f"{saliencyNode.GetName()} vs {referenceNode.GetName()}"
    key = f"{saliencyNode.GetID()} localisation"
    tableNode = next((n for n in _tablesWith(scene, key)), None)
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        tableNode.SetAttribute("XAI.key", key)
    table = tableNode.GetTable()
    table.Initialize()
    metric, value = vtk.vtkStringArray(), vtk.vtkDoubleArray()
    metric.SetName("metric")
    value.SetName("value")
    values = scores.to_dict()
    for column, label in _LOCALISATION_ROWS:
        metric.InsertNextValue(label)
        value.InsertNextValue(float(values[column]))
    table.AddColumn(metric)
    table.AddColumn(value)
    tableNode.Modified()
    tableNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, saliencyNode.GetID())
    tableNode.SetNodeReferenceID("XAI.reference", referenceNode.GetID())
    mrml.placeBesideInput(scene, saliencyNode, tableNode)
    return tableNode


def _tablesWith(scene, key):
    nodes = scene.GetNodesByClass("vtkMRMLTableNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())
            if nodes.GetItemAsObject(i).GetAttribute("XAI.key") == key]
