"""``slicer-xai``, the command line of the engine: explain, report, models, data (:mod:`.main`) and
robustness, sanity, faithfulness, bench (:mod:`.robustness`).

It sits above both libraries (``XAIExplainLib``, ``XAIRobustnessLib``), which never import it; it lives in
the XAIRobustness module folder because that module already depends on XAIExplain. The Slicer modules
run it as ``PythonSlicer -m XAICommandLine ...`` in a background process.
"""
