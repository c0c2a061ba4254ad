"""SlicerXAI in a browser: the XAIExplain workflow on Slicer's own MRML libraries (trame-slicer).

No engine code lives here: the viewer calls the same engine (``XAIExplainLib``) and the same MRML glue
(``XAIExplainLib.mrml``) as the desktop modules.
"""
