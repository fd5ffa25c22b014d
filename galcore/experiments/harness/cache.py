"""The run cache (``results/cache``): keys, paths, atomic reads and writes.

A run's key hashes its whole :class:`~galcore.experiments.harness.config.TrainConfig`, the
data's fingerprint, the freshly built model and the training code
(:mod:`galcore.experiments.harness.hashing`); loader runs, whose data cannot be hashed here, key on
the config and the code alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from galcore.experiments.harness.config import Data, RunResult, TrainConfig
from galcore.experiments.harness.hashing import code_fingerprint, model_fingerprint
from galcore.experiments.harness.results import results_dir

__all__ = ["cache_dir", "cache_key", "cache_path", "cached", "config_only_key", "read_cached", "write_cached"]


def cache_key(cfg: TrainConfig, data: Data, model: nn.Module) -> str:
    """The cache key of a run: ``<cfg.key()>-<context>``, the context hashing the data's
    fingerprint, :func:`model_fingerprint` of the model built for ``cfg.seed`` and
    :func:`code_fingerprint` (the training code and the model's classes)."""
    context = hashlib.sha256(
        f"{data.fingerprint()}|{model_fingerprint(model)}|{code_fingerprint(model)}".encode()
    ).hexdigest()[:16]
    return f"{cfg.key()}-{context}"


def config_only_key(cfg: TrainConfig) -> str:
    """The key of runs whose data cannot be hashed (loader-based): config and training code."""
    return f"{cfg.key()}-{code_fingerprint()[:16]}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def cache_path(cfg: TrainConfig, key: str | None = None) -> Path:
    """The cache file of a run: ``results/cache/<data>-<model>-<key>.json``.

    Without ``key``: the newest cached run of this config (on any data or model), or the path
    a config-only run would use when there is none — a hint for schedulers, not a lookup
    :func:`run` trusts."""
    folder = results_dir("cache")
    stem = f"{_safe(cfg.data)}-{_safe(cfg.model)}-"
    if key is not None:
        return folder / f"{stem}{key}.json"
    found = sorted(folder.glob(f"{glob_escape(stem)}{cfg.key()}-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else folder / f"{stem}{config_only_key(cfg)}.json"


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return float(value)


def read_cached(cfg: TrainConfig, key: str | None = None) -> RunResult | None:
    """The cached result under ``key`` (default: the config-only key), or ``None``."""
    path = cache_path(cfg, key or config_only_key(cfg))
    if not path.is_file():
        return None
    blob = json.loads(path.read_text())
    return RunResult(**{k: v for k, v in blob.items() if k in RunResult.__dataclass_fields__})


def write_cached(cfg: TrainConfig, result: RunResult, key: str | None = None) -> Path:
    """Cache a run atomically under ``key`` (default: the config-only key); several
    processes may share the folder."""
    path = cache_path(cfg, key or config_only_key(cfg))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(result), default=_json_default))
    tmp.replace(path)
    return path


def cached(cfg: TrainConfig, train: Callable[[], RunResult], cache: bool = False, *, key: str | None = None) -> RunResult:
    """``train()``'s result for ``cfg``, read from / written to the cache when ``cache``.

    ``key`` defaults to the config-only key (config and training code): for runs whose data
    and model cannot be hashed here (loaders); :func:`run` passes :func:`cache_key`."""
    if cache and (hit := read_cached(cfg, key)) is not None:
        return hit
    result = train()
    if cache:
        write_cached(cfg, result, key)
    return result


def cache_dir() -> Path:
    """Where :func:`run` caches finished runs."""
    return results_dir("cache")
