"""Subject hierarchy placement: results go under the input's study (or beside the input)."""

__all__ = ["placeBesideInput"]


def placeBesideInput(scene, inputNode, resultNode) -> int:
    """Put ``resultNode`` under the subject hierarchy parent of ``inputNode``; return its item ID.

    The desktop application makes an item for every data node as it is added; a bare MRML scene
    does not, so missing items are created here.
    """
    shNode = scene.GetSubjectHierarchyNode()
    inputItem = _itemFor(shNode, inputNode, shNode.GetSceneItemID())
    parentItem = shNode.GetItemParent(inputItem)
    resultItem = _itemFor(shNode, resultNode, parentItem)
    if shNode.GetItemParent(resultItem) != parentItem:
        shNode.SetItemParent(resultItem, parentItem)
    return resultItem


def _itemFor(shNode, dataNode, parentItem) -> int:
    item = shNode.GetItemByDataNode(dataNode)
    if not item:
        item = shNode.CreateItem(parentItem, dataNode)
    return item
