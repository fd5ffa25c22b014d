"""galcore's experiments: what the notebooks and the main job run, built on the core.

Data, models, the one harness (arms x seeds, cache, paired statistics), per-notebook modules,
plots, the main-job runner and its report. Imports flow one way: notebooks -> experiments ->
core (``galcore``); the core never imports this package. Needs the ``experiments`` extra
(``pip install -e ".[experiments]"``).
"""

from galcore.experiments.harness.profile import choose, get_profile, use_profile

__all__ = ["choose", "get_profile", "use_profile"]
