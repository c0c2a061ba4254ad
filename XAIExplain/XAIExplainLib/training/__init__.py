"""Reproducible training scripts for the demo model bundles in ``Resources/Models``.

Each script is runnable as ``python -m XAIExplainLib.training.<name> --out <bundle folder>``, trains on
CPU from cases generated on the fly by :mod:`XAIExplainLib.data`, measures the model on cases from a
seed never used in training and writes a MONAI bundle (``configs/metadata.json``,
``configs/inference.json``, ``models/model.pt``, ``docs/README.md``).

* :mod:`.brain_classifier` — ``brain-lesion-classifier`` (3-D ResNet, lesion present / absent).
* :mod:`.brain_segmenter` — ``brain-lesion-segmenter`` (3-D U-Net with dropout).
* :mod:`.chest_classifier` — ``chest-nodule-classifier`` (3-D ResNet on CT, nodule present / absent).
"""
