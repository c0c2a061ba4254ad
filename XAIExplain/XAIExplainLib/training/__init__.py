"""Reproducible training of the demo model bundles in ``Resources/Models``.

``python -m XAIExplainLib.training <model> --out <bundle folder>`` trains one of the models of
:mod:`.recipes` on CPU from cases generated on the fly by :mod:`XAIExplainLib.data`, measures it on
cases from a seed never used in training and writes a MONAI bundle (``configs/metadata.json``,
``configs/inference.json``, ``models/model.pt``, ``docs/README.md``):

* ``brain-lesion-classifier`` — lesion present / absent on T1 brain MRI;
* ``brain-lesion-segmenter`` — lesion mask on T1 brain MRI (dropout for MC-dropout uncertainty);
* ``chest-nodule-classifier`` — nodule present / absent on chest CT.

``python -m XAIExplainLib.training.evaluate <model> --eval-seed S [S ...]`` measures a bundle again on
more held-out cases, with 95 % bootstrap intervals, and can record the result in its card.
"""
