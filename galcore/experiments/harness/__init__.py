"""The harness every notebook trains through, one job per module, data flowing down:

- :mod:`~galcore.experiments.harness.data` (digits, MNIST-1D) and
  :mod:`~galcore.experiments.harness.models`: what is trained;
- :mod:`~galcore.experiments.harness.config`: :class:`Data`, :class:`TrainConfig` (an arm; its
  ``gal`` is a :class:`galcore.GALConfig`), :class:`Setup`, :class:`RunResult`;
- :mod:`~galcore.experiments.harness.train`: the one training loop with its :class:`StepHook`,
  :func:`run`, :func:`train_loop` (any batches), :func:`run_arms` (arms x seeds);
- :mod:`~galcore.experiments.harness.hashing` and :mod:`~galcore.experiments.harness.cache`: the run cache;
- :mod:`~galcore.experiments.harness.compare` and :mod:`~galcore.experiments.harness.stats`:
  paired comparisons and verdicts;
- :mod:`~galcore.experiments.harness.optim`, ``progress``, ``plots``, ``results``, ``profile``,
  ``bench`` (step timing).

The names below are the public API (``from galcore.experiments import harness``).
"""

from galcore.build import H_SEED_OFFSET
from galcore.experiments.harness.cache import cache_dir, cache_key, cache_path, cached, read_cached, write_cached
from galcore.experiments.harness.compare import COMPARE_COLUMNS, compare, paired_table
from galcore.experiments.harness.config import Data, RunResult, Setup, TrainConfig
from galcore.experiments.harness.hashing import code_files, code_fingerprint, model_fingerprint, state_hash
from galcore.experiments.harness.train import (
    StepHook,
    build_gal,
    device_of,
    evaluate,
    fit,
    loss_function,
    optimizers,
    run,
    run_arms,
    train_loop,
)

__all__ = [
    "COMPARE_COLUMNS", "H_SEED_OFFSET", "Data", "RunResult", "Setup", "StepHook", "TrainConfig", "build_gal",
    "cache_dir", "cache_key", "cache_path", "cached", "code_files", "code_fingerprint", "compare", "device_of",
    "evaluate", "fit", "loss_function", "model_fingerprint", "optimizers", "paired_table", "read_cached", "run",
    "run_arms", "state_hash", "train_loop", "write_cached",
]
