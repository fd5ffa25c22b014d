"""Notebook 02 (classification) in modules with one job each; this module gathers them:

- :mod:`~galcore.experiments.classification.plan`: benchmarks, optimizers, arms, seeds per profile;
- :mod:`~galcore.experiments.classification.runs`: the runs (benchmarks, the MNIST-1D paper's
  baselines, the ImageNet recipe, h's gradient bound);
- :mod:`~galcore.experiments.classification.tables`: paired comparisons with verdicts, the
  sample-size calculation, the null of one run pair, cost;
- :mod:`~galcore.experiments.classification.text`: the sentences, generated from the tables;
- :mod:`~galcore.experiments.classification.figures`: learning curves, acceptance.
"""

from __future__ import annotations

from galcore.experiments.classification import figures, plan, runs, tables, text
from galcore.experiments.classification.plan import gal_options

__all__ = ["figures", "gal_options", "plan", "runs", "tables", "text"]
