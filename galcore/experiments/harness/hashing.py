"""Hashes that key the cache: tensors and state dicts, a freshly built model, the training code.

Equal hashes mean bit-identical bytes. :func:`code_files` lists the sources whose text decides a
training run (the core, the harness's config and loop, ``optim.py``); plots, reports and the
notebook packages are not among them, so editing those leaves cached runs valid.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["code_files", "code_fingerprint", "model_fingerprint", "state_hash", "update_tensor"]


def update_tensor(digest: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to ``digest``."""
    t = t.detach()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def state_hash(module: nn.Module | Mapping[str, Tensor]) -> str:
    """sha256 (hex) of a module's ``state_dict()`` (or of a mapping of tensors): names, dtypes,
    shapes and bytes. Equal hashes mean bit-identical weights and buffers."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, Tensor):
            update_tensor(digest, value)
        else:  # extra state (e.g. GAL's options)
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


_PACKAGE = Path(__file__).resolve().parents[2]  # galcore/


def code_files() -> list[Path]:
    """The sources whose text decides a training run, hashed into every cache key: the core
    (``galcore/*.py``, ``galcore/integrations/*.py``) and the harness's ``config.py``, ``train.py``, ``optim.py``,
    ``placebo.py``, ``controls.py``. Plotting, reporting and notebook modules are not among them."""
    here = Path(__file__).resolve().parent
    core = sorted(_PACKAGE.glob("*.py")) + sorted((_PACKAGE / "integrations").glob("*.py"))
    return core + [here / name for name in ("config.py", "train.py", "optim.py", "placebo.py", "controls.py")]


@functools.lru_cache(maxsize=1)
def _files_digest() -> str:
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # defined where no source is kept (an exec'd string)
        return f"<no source: {cls.__module__}.{cls.__qualname__}>"


def code_fingerprint(model: nn.Module | None = None) -> str:
    """sha256 (hex) of :func:`code_files` and, given a model, of the source of every
    ``nn.Module`` class in it outside torch (``inspect.getsource``), plus torch's version.
    A class without retrievable source (defined in a notebook cell) enters by name only: its
    structure and weights still key the run (:func:`model_fingerprint`), its code does not."""
    digest = hashlib.sha256(_files_digest().encode())
    digest.update(torch.__version__.encode())
    if model is not None:
        classes = {type(m) for m in model.modules()}
        for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
            digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
            if not cls.__module__.startswith("torch."):
                digest.update(_class_source(cls).encode())
    return digest.hexdigest()


_PLAIN = (bool, int, float, str, type(None))


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of a freshly built model: its initial weights and buffers
    (:func:`state_hash`), its ``repr`` (layers and their settings, e.g. dropout p) and every
    module's public plain attributes (numbers, strings, tuples of them)."""
    digest = hashlib.sha256(state_hash(model).encode())
    digest.update(repr(model).encode())
    for name, m in model.named_modules():
        plain = {k: v for k, v in vars(m).items() if not k.startswith("_") and
                 (isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v)))}
        digest.update(f"{name}:{json.dumps(plain, sort_keys=True, default=str)}".encode())
    return digest.hexdigest()

