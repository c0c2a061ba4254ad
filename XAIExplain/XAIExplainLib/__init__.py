"""SlicerXAI engine: explain a medical-imaging model's decision on one case, on the case's own grid.

Pure Python (torch, MONAI, Captum, SimpleITK, NumPy); never imports Slicer, Qt or VTK — the MRML glue
in :mod:`XAIExplainLib.mrml` and the Slicer modules build on it.
"""

__version__ = "0.1.0"
