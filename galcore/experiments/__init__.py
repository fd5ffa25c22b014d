"""galcore's experiments: what the notebooks and the main job run, built on the core.

Packages only: ``harness`` (data, models, configs, the one training loop, cache, paired
statistics, plots, results), one per notebook (``theory`` 01, ``classification`` 02,
``detection`` 03, ``regression`` 04, ``ablations`` 05) and ``main`` (the main-job runner and
its report). Imports flow one way: notebooks -> experiments ->
core (``galcore``); the core never imports this package. Needs the ``experiments`` extra
(``pip install -e ".[experiments]"``).
"""

from galcore.experiments.harness.profile import choose, get_profile, use_profile

__all__ = ["choose", "get_profile", "use_profile"]
