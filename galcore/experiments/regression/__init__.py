"""Notebook 04 (regression): data (:mod:`.data`), the arms, runs, margins, verdicts and the
computed conclusion (:mod:`.study`), what h receives (:mod:`.probe`), figures (:mod:`.plots`).
The notebook imports this package (``from galcore.experiments import regression as R``)."""

from galcore.experiments.regression import data, plots, probe, study
from galcore.experiments.regression.data import *
from galcore.experiments.regression.plots import *
from galcore.experiments.regression.probe import *
from galcore.experiments.regression.study import *

__all__ = [*data.__all__, *plots.__all__, *probe.__all__, *study.__all__]  # noqa: PLE0604 - the submodules' names
