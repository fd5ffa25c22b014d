"""Notebook 04 (regression): data (:mod:`.data`), the arms, runs, margins and verdicts
(:mod:`.study`), the computed conclusion (:mod:`.text`), what h receives (:mod:`.probe`), figures (:mod:`.plots`).
The notebook imports this package (``from galcore.experiments import regression as R``)."""

from galcore.experiments.regression import data, plots, probe, study, text
from galcore.experiments.regression.data import *
from galcore.experiments.regression.plots import *
from galcore.experiments.regression.probe import *
from galcore.experiments.regression.study import *
from galcore.experiments.regression.text import *

__all__ = [*data.__all__, *plots.__all__, *probe.__all__, *study.__all__, *text.__all__]  # noqa: PLE0604 - the submodules' names
