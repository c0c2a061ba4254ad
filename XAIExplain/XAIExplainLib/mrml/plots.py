"""Curves and metrics as MRML table, plot series and plot chart nodes (robustness sweeps, deletion /
insertion curves). Re-plotting under the same key refills the same nodes."""

import numpy as np
import vtk

import slicer

__all__ = ["showCurves", "findPlotNodes"]

_KEY_ATTRIBUTE = "XAI.plot"


def showCurves(
    scene,
    key: str,
    columns: dict,
    xColumn: str,
    yColumns=None,
    title: str = "",
    xAxisTitle: str = "",
    yAxisTitle: str = "",
    lineStyle: str = "solid",
):
    """Put ``columns`` (name -> numbers, equal lengths) in a table and plot ``yColumns`` against ``xColumn``.

    Returns ``(tableNode, chartNode)``. The chart is shown in the scene's plot views, if any (the
    desktop layout or the web viewer decides whether one is visible).
    """
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError("All columns of a plot table need the same number of values.")
    if xColumn not in columns:
        raise ValueError(f"Column {xColumn!r} is not in the table.")
    yColumns = [name for name in (yColumns or columns) if name != xColumn]
    tableNode, chartNode = findPlotNodes(scene, key)
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{title or key} table"))
        tableNode.SetAttribute(_KEY_ATTRIBUTE, key)
    if chartNode is None:
        chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{title or key} chart"))
        chartNode.SetAttribute(_KEY_ATTRIBUTE, key)
    _fillTable(tableNode, columns)

    # Series: reuse those already on the chart by name, drop those no longer asked for.
    existing = {}
    for index in range(chartNode.GetNumberOfPlotSeriesNodes()):
        seriesNode = chartNode.GetNthPlotSeriesNode(index)
        if seriesNode is not None:
            existing[seriesNode.GetName()] = seriesNode
    chartNode.RemoveAllPlotSeriesNodeIDs()
    for name in yColumns:
        seriesNode = existing.pop(name, None)
        if seriesNode is None:
            seriesNode = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            seriesNode.SetAttribute(_KEY_ATTRIBUTE, key)
        seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
        seriesNode.SetXColumnName(xColumn)
        seriesNode.SetYColumnName(name)
        seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        seriesNode.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        seriesNode.SetLineStyle(
            slicer.vtkMRMLPlotSeriesNode.LineStyleDash if lineStyle == "dash" else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
        )
        chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
    for seriesNode in existing.values():
        scene.RemoveNode(seriesNode)

    chartNode.SetTitle(title or key)
    chartNode.SetXAxisTitle(xAxisTitle or xColumn)
    chartNode.SetYAxisTitle(yAxisTitle)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLPlotViewNode").SetPlotChartNodeID(chartNode.GetID())
    return tableNode, chartNode


def findPlotNodes(scene, key: str):
    """The table and chart node plotted under ``key`` earlier, or None for each."""
    found = {}
    for className in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
        for index in range(scene.GetNumberOfNodesByClass(className)):
            node = scene.GetNthNodeByClass(index, className)
            if node.GetAttribute(_KEY_ATTRIBUTE) == key:
                found[className] = node
                break
    return found.get("vtkMRMLTableNode"), found.get("vtkMRMLPlotChartNode")


def _fillTable(tableNode, columns: dict) -> None:
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for name, values in columns.items():
        array = np.asarray(values)
        if array.dtype.kind in "iufb":
            column = tableNode.AddColumn(_vtkArray(array.astype(np.float64), name))
        else:
            column = tableNode.AddColumn()
            column.SetName(name)
            column.SetNumberOfValues(len(array))
            for index, value in enumerate(array):
                column.SetValue(index, str(value))
        tableNode.SetColumnTitle(name, name)
    table.Modified()
    tableNode.EndModify(wasModifying)


def _vtkArray(values, name):
    array = vtk.vtkDoubleArray()
    array.SetName(name)
    array.SetNumberOfTuples(len(values))
    for index, value in enumerate(values):
        array.SetValue(index, float(value))
    return array
