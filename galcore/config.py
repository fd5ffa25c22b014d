"""GAL's options: one validated list, used by :class:`galcore.GAL`, :class:`galcore.ParamGAL`
and the integrations (the Ultralytics trainer reads them from ``gal_<option>=`` keywords, a
dict or a yaml/json file).

Every option is checked when a :class:`GALConfig` is built, so a bad value fails at once with
an error naming the option, before any model, data or optimizer is touched.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["GALConfig", "option_docs", "resolve_dtype"]

FirstOrder = Literal["sum", "mean"]
Accept = Literal["decrease", "always"]
Normalize = Literal["sample", "batch"]

_DTYPE_NAMES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32,
                "bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16}


def resolve_dtype(value: Any, name: str = "compute_dtype") -> torch.dtype | None:
    """``None``, a floating ``torch.dtype`` or its name (``"float64"``, ``"torch.float32"``)."""
    if value is None or isinstance(value, torch.dtype):
        dtype = value
    elif isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key in ("none", ""):
            return None
        if key not in _DTYPE_NAMES:
            raise ValueError(f"{name} must be a floating dtype or its name ({', '.join(_DTYPE_NAMES)}), got {value!r}")
        dtype = _DTYPE_NAMES[key]
    else:
        raise TypeError(f"{name} must be a torch.dtype, a dtype name or None, got {type(value).__name__} {value!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating dtype, got {dtype}")
    return dtype


def _real(name: str, value: Any, *, low: float, low_open: bool) -> float:
    """A finite real number above ``low`` (strings, None and bools are refused, not converted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (low_open and v == low):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '>='} {low:g}, got {value!r}")
    return v


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class GALConfig:
    """GAL's options (the paper's Algorithm 1: one iteration). Validated on construction; immutable.

    Attributes:
        ratio: r >= 0, the adjustment's norm relative to the gradient's, per vector
            (``a_i <- r ||g_i|| a_i / ||a_i||``). ``0`` is plain training, bit for bit.
        scale: > 0, the tentative step uses ``eta = lr * scale``.
        hidden: h's hidden widths; ``None`` takes the release's for the output size
            (:func:`galcore.release_hidden`).
        activation: between h's linear layers: ``None`` (the release's linear stack),
            ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"silu"``.
        first_order: the first-order term of h's objective. ``"sum"``: ``<g, delta>`` over the
            whole batch, the exact Taylor term of a batch-mean loss (default). ``"mean"``: the
            release's form, that sum divided by the batch size B (also for dense maps and lists in output
            space; the number of elements for :class:`galcore.ParamGAL`, as the release's 3D toy).
        accept: ``"decrease"`` (use ``g + a`` only when the tentative loss did not rise; the
            release) or ``"always"``.
        normalize: ``"sample"`` (the release: every ``a_i`` has norm ``r ||g_i||``) or
            ``"batch"``: additionally shrink the whole batch's adjustment so that its sum over
            the batch has at most ``r`` times the norm of the gradient's sum. Per-sample
            gradients cancel in the batch sum while a nearly constant h output does not; the
            batch bound keeps the adjustment's share of the *batch* step at most r.
        dim: the dimension of the outputs that h reads (``-1`` for logits (B, C), ``1`` for
            dense maps (B, C, H, W)). Ignored by :class:`galcore.ParamGAL`.
        compute_dtype: dtype of GAL's own arithmetic (the loss at x and at the tentative point,
            B x C sized). Default ``torch.float64``: output-space remainders are of order
            ``(lr |g|)^2``, often below float32's resolution, and would round to 0 (h then
            gets no gradient). On a device without float64 (MPS) GAL warns once and uses
            float32. ``None``: the outputs' dtype, half precision promoted to float32.
            Names (``"float64"``) are accepted.
        track_plain: also measure the remainder of the plain tentative step ``x - eta g``
            (one more loss evaluation, no graph) in ``GALStep.remainder_plain``.
        sync_distributed: under ``torch.distributed``, average h's gradient over the ranks
            inside every step, so h stays identical everywhere (turn off if you wrap GAL in DDP).
        seed: when set, h's initial weights are drawn from a generator with this seed, leaving
            the global random stream untouched (a paired standard run sees the same dropout
            masks and data order). ``None``: from the global stream, like any ``nn.Module``.
        lr_factor: h's learning rate relative to the model's, for integrations that build the
            optimizer (the Ultralytics trainer). ``GAL`` itself does not read it.
    """

    ratio: float = 1e-3
    scale: float = 1.0
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    first_order: FirstOrder = "sum"
    accept: Accept = "decrease"
    normalize: Normalize = "sample"
    dim: int = -1
    compute_dtype: torch.dtype | None = torch.float64
    track_plain: bool = False
    sync_distributed: bool = True
    seed: int | None = None
    lr_factor: float = 1.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "ratio", _real("ratio", self.ratio, low=0.0, low_open=False))
        put(self, "scale", _real("scale", self.scale, low=0.0, low_open=True))
        put(self, "lr_factor", _real("lr_factor", self.lr_factor, low=0.0, low_open=False))
        if self.hidden is not None:
            if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence):
                raise TypeError(f"hidden must be a sequence of ints or None, got {type(self.hidden).__name__}")
            if any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in self.hidden):
                raise ValueError(f"hidden widths must be ints >= 1, got {self.hidden!r}")
            put(self, "hidden", tuple(int(w) for w in self.hidden))
        if self.activation is not None:
            if not isinstance(self.activation, str):
                raise TypeError(f"activation must be a name or None, got {type(self.activation).__name__} "
                                "(for a custom h pass h=module to GAL)")
            put(self, "activation", _choice("activation", self.activation.lower(), ("relu", "gelu", "tanh", "silu")))
        for name, options in (("first_order", ("sum", "mean")), ("accept", ("decrease", "always")),
                              ("normalize", ("sample", "batch"))):
            put(self, name, _choice(name, getattr(self, name), options))
        if isinstance(self.dim, bool) or not isinstance(self.dim, numbers.Integral):
            raise TypeError(f"dim must be an int, got {type(self.dim).__name__} {self.dim!r}")
        put(self, "dim", int(self.dim))
        put(self, "compute_dtype", resolve_dtype(self.compute_dtype))
        for name in ("track_plain", "sync_distributed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__} {self.seed!r}")
        if self.seed is not None:
            put(self, "seed", int(self.seed))  # numpy integers become Python ints (JSON, weights_only loads)

    # -- conversions --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/yaml-ready values (dtype as its name, hidden as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden) if self.hidden is not None else None
        d["compute_dtype"] = str(self.compute_dtype).removeprefix("torch.") if self.compute_dtype is not None else None
        return d

    def replace(self, **changes: Any) -> GALConfig:
        """A copy with ``changes`` applied (validated)."""
        return GALConfig(**{**self._raw(), **changes})

    def _raw(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_any(cls, value: Any = None, **overrides: Any) -> GALConfig:
        """A config from ``None``, a :class:`GALConfig`, a mapping or a yaml/json file path
        (the options at the top level or under a ``gal:`` key), then ``overrides``."""
        if value is None:
            base: dict[str, Any] = {}
        elif isinstance(value, GALConfig):
            base = value._raw()
        elif isinstance(value, Mapping):
            base = dict(value)
        elif isinstance(value, (str, os.PathLike)):
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"gal: no GAL options file at {path}")
            text = path.read_text()
            if path.suffix == ".json":
                base = json.loads(text)
            else:
                import yaml  # PyYAML (extras experiments/yolo): only for yaml files

                base = yaml.safe_load(text) or {}
            if not isinstance(base, Mapping):
                raise TypeError(f"gal: {path} must hold a mapping of GAL options (at the top level or under "
                                f"'gal:'), it holds a {type(base).__name__}: {base!r:.80}")
            if isinstance(base.get("gal"), Mapping):
                base = dict(base["gal"])
        else:
            raise TypeError(f"gal must be a GALConfig, a dict or a path to a yaml/json file, got {type(value).__name__}")
        base.update(overrides)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - names)
        if unknown:
            raise ValueError(f"unknown GAL option(s) {unknown}; valid: {sorted(names)}")
        return cls(**base)


UNSET: Any = object()  # "ratio not given" to a constructor


def option_docs() -> str:
    """The ``Attributes:`` section of :class:`GALConfig`'s docstring, dedented: the one description
    of every option, which :class:`galcore.GAL` and :class:`galcore.ParamGAL` append to their own."""
    doc = inspect.getdoc(GALConfig) or ""
    return doc.split("Attributes:\n", 1)[1]


def options_config(config: GALConfig | None, ratio: Any, options: dict[str, Any], who: str) -> GALConfig:
    """The options passed one by one (validated by :class:`GALConfig`), or ``config``; not both."""
    given = {**({} if ratio is UNSET else {"ratio": ratio}), **options}
    if config is None:
        return GALConfig.from_any(None, **given)
    if given:
        raise TypeError(f"pass either config= or individual options to {who}, not both: got {', '.join(given)}")
    if not isinstance(config, GALConfig):
        raise TypeError(f"config must be a GALConfig, got {type(config).__name__}")
    return config


def documented(first: str) -> Callable[[type], type]:
    """A class decorator for GAL's constructors: append :class:`GALConfig`'s option docs to the class's
    and give ``__init__`` the signature of the options it takes (``inspect.signature``, IDEs), both
    made from GALConfig's fields. ``first``: the name of the constructor's first argument."""

    def wrap(cls: type) -> type:
        cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\nOptions (:class:`galcore.GALConfig`):\n" + option_docs()
        kw, pos = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        defaults = GALConfig()
        cls.__init__.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
            inspect.Parameter("self", pos), inspect.Parameter(first, pos),
            *(inspect.Parameter(f.name, pos if f.name == "ratio" else kw, default=getattr(defaults, f.name))
              for f in fields(GALConfig)),
            inspect.Parameter("h", kw, default=None), inspect.Parameter("config", kw, default=None)])
        return cls

    return wrap
