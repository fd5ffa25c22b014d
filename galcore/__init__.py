"""galcore: gradient adjustment learning (GAL) for PyTorch, with remainder diagnostics.

The core needs torch alone:

- :class:`GAL` (output space) and :class:`ParamGAL` (parameter space), their options in one
  validated :class:`GALConfig`, and :class:`GALStep`, the record of a step;
- :mod:`galcore.reference`, the release's step restated plainly (the tests' oracle);
- h's builder (:func:`make_adjuster`, :func:`release_hidden`);
- remainder diagnostics (:class:`RemainderProbe`, :func:`remainder_terms`, :func:`output_remainder`);
- :mod:`galcore.distributed` (DDP helpers) and :mod:`galcore.integrations` (Ultralytics,
  imported on demand).

The notebooks' code lives in :mod:`galcore.experiments` (extra ``experiments``); the core never
imports it.
"""

from galcore import distributed, reference
from galcore.adjuster import make_adjuster, release_hidden
from galcore.config import GALConfig
from galcore.gal import GAL, GALStep
from galcore.param import ParamGAL
from galcore.remainder import RemainderProbe, RemainderTerms, output_remainder, remainder_terms

__version__ = "0.2.0"

__all__ = [
    "GAL",
    "GALConfig",
    "GALStep",
    "ParamGAL",
    "RemainderProbe",
    "RemainderTerms",
    "__version__",
    "distributed",
    "make_adjuster",
    "output_remainder",
    "reference",
    "release_hidden",
    "remainder_terms",
]
