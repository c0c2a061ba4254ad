"""Provenance of a result as node attributes (saved with the scene).

Every key of the engine's provenance dict becomes an ``XAI.<key>`` attribute (camelCase, strings as
they are, lists and numbers as JSON); nested dicts are flattened (``{"model": {"sha256": ...}}`` ->
``XAI.modelSha256``) so that model id, hash, method, target, software and time can be read (and
searched) one by one. The whole dict is also kept verbatim in ``XAI.provenance``.
"""

import json

__all__ = ["PREFIX", "setProvenanceAttributes", "getProvenance", "attributeName"]

PREFIX = "XAI."


def attributeName(key: str) -> str:
    """``model_sha256`` -> ``XAI.modelSha256``."""
    head, *rest = str(key).split("_")
    return PREFIX + head + "".join(part[:1].upper() + part[1:] for part in rest)


def setProvenanceAttributes(node, provenance: dict) -> None:
    """Write ``provenance`` onto ``node``, replacing provenance attributes of an earlier run."""
    attributes = _flatten(provenance)
    for key in _flatten(getProvenance(node)):
        if key not in attributes:
            node.RemoveAttribute(attributeName(key))
    for key, value in attributes.items():
        node.SetAttribute(attributeName(key), value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    node.SetAttribute(PREFIX + "provenance", json.dumps(provenance, sort_keys=True))


def getProvenance(node) -> dict:
    """The provenance dict written by :func:`setProvenanceAttributes` (empty if none)."""
    text = node.GetAttribute(PREFIX + "provenance") if node is not None else None
    return json.loads(text) if text else {}


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat
