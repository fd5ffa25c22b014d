"""galcore: gradient adjustment learning (GAL) for PyTorch, with remainder diagnostics.

See ``galcore.GAL`` (output space), ``galcore.ParamGAL`` (parameter space) and
``galcore.RemainderProbe`` / ``galcore.remainder_terms`` (diagnostics). Integrations:
``galcore.integrations.ultralytics`` (``GALDetectionTrainer``; imported on demand, since it
imports Ultralytics) and ``galcore.distributed`` (DDP helpers).
"""

from galcore import distributed
from galcore.adjuster import make_adjuster, release_hidden
from galcore.gal import GAL, GALStep, ParamGAL
from galcore.profile import choose, get_profile
from galcore.remainder import RemainderProbe, RemainderTerms, output_remainder, remainder_terms

__version__ = "0.1.0"

__all__ = [
    "GAL",
    "GALStep",
    "ParamGAL",
    "RemainderProbe",
    "RemainderTerms",
    "__version__",
    "choose",
    "distributed",
    "get_profile",
    "make_adjuster",
    "output_remainder",
    "release_hidden",
    "remainder_terms",
]
