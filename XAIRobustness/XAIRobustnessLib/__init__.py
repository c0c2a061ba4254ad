"""XAIRobustness: how far an explanation can be trusted on the open case.

``sweepNodes`` puts a perturbation sweep into the scene (table, plot, perturbed case and its
saliency); it is MRML glue like :mod:`XAIExplainLib.mrml` and imports no engine code.
"""
