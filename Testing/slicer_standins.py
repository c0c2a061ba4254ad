"""Stand-ins for the parts of the Slicer application that the slicer-core wheel lacks, so the modules'
own files (XAIExplain.py, XAIRobustness.py) import and their Logic runs on real MRML scenes.

slicer-core has the MRML libraries and ``slicer.util``, but not ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n`` or ``qt``. The Logic needs none of them to run: these
stand-ins satisfy the imports only (the tests pass their own parameters). Standard library only, so that an
installed-tree check can load this file by path without seeing the checkout.
"""

from __future__ import annotations

import sys
import types

__all__ = ["standIns", "install", "importModule"]


def standIns() -> dict:
    """Module name -> stand-in module."""

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    class _Logic(_Base):
        def getParameterNode(self):
            raise NotImplementedError("the tests pass their own parameters")

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = scripted.ScriptedLoadableModuleWidget = _Base
    scripted.ScriptedLoadableModuleTest = _Base
    scripted.ScriptedLoadableModuleLogic = _Logic
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = lambda low, high: None
    return {"slicer.ScriptedLoadableModule": scripted, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
            "qt": types.ModuleType("qt")}


def install() -> None:
    """Put the stand-ins into ``sys.modules`` (for a child process that imports the modules)."""
    import slicer

    for name, standIn in standIns().items():
        sys.modules[name] = standIn
        if name.startswith("slicer."):
            setattr(slicer, name.split(".", 1)[1], standIn)


def importModule(monkeypatch, name: str, folders):
    """Import the module file ``name`` from ``folders`` with the stand-ins in place, for one test
    (``monkeypatch``: pytest's fixture, which undoes all of it afterwards)."""
    import importlib

    import slicer

    for moduleName, standIn in standIns().items():
        monkeypatch.setitem(sys.modules, moduleName, standIn)
        if moduleName.startswith("slicer."):
            monkeypatch.setattr(slicer, moduleName.split(".", 1)[1], standIn, raising=False)
    for folder in folders:
        monkeypatch.syspath_prepend(str(folder))
    for moduleName in ("XAIExplain", "XAIRobustness"):
        monkeypatch.delitem(sys.modules, moduleName, raising=False)
    return importlib.import_module(name)


def explainParameters(module, inputVolume, model: str, method: str = "GRADCAM", **changes):
    """XAI Explain's parameter node as the Logic reads it (a plain namespace), for ``model`` on ``inputVolume``."""
    import types

    values = dict(inputVolume=inputVolume, model=model, trustModel=False, clinicalTask="", target="", samples=2,
                  audience=module.Audience.RADIOLOGIST, method=getattr(module.ExplanationMethod, method),
                  uncertaintyMethod=module.UncertaintyMethod.NONE, opacity=0.5, threshold=0.2,
                  outputSaliency=None, outputUncertainty=None, channel2Volume=None, channel3Volume=None,
                  channel4Volume=None)
    values.update(changes)
    return types.SimpleNamespace(**values)
