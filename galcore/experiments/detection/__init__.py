"""Notebook 03 (detection): one YOLO run (:mod:`.train`), many cached runs (:mod:`.jobs`), the
comparison (:mod:`.study`), the optimizer's step in output space (:mod:`.probe`), the generated
shapes data set (:mod:`.shapes`) and Ultralytics' offline set-up (:mod:`.offline`).
The notebook imports this package (``from galcore.experiments import detection``)."""

from galcore.experiments.detection import jobs, probe, study, train
from galcore.experiments.detection.jobs import *
from galcore.experiments.detection.probe import *
from galcore.experiments.detection.study import *
from galcore.experiments.detection.train import *

__all__ = [*jobs.__all__, *probe.__all__, *study.__all__, *train.__all__]  # noqa: PLE0604 - the submodules' names
