"""Integrations of GAL with third-party trainers.

- :mod:`galcore.integrations.ultralytics`: Ultralytics YOLO detection (``GALDetectionTrainer``,
  ``GALCriterion``). Needs the ``yolo`` extra (``pip install galcore[yolo]``); imported on demand,
  so ``import galcore.integrations`` does not import Ultralytics.
"""

__all__ = ["ultralytics"]
