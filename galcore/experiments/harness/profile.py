"""The run profile, read in one place: ``GALCORE_PROFILE`` = ``smoke`` | ``default`` | ``full``.

- ``smoke``: tests and nbval, seconds to a minute per notebook on a CPU.
- ``default``: the main job, minutes on a CPU, embedded data only.
- ``full``: a GPU and paper-scale data (downloads allowed where the machine has internet).
"""

from __future__ import annotations

import os
from typing import Literal, TypeVar

Profile = Literal["smoke", "default", "full"]
PROFILES: tuple[Profile, ...] = ("smoke", "default", "full")
ENV_VAR = "GALCORE_PROFILE"

T = TypeVar("T")


__all__ = ["ENV_VAR", "PROFILES", "Profile", "choose", "get_profile", "use_profile"]


def _validate(value: object, name: str) -> Profile:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a profile name ({', '.join(PROFILES)}), got {type(value).__name__}")
    key = value.strip().lower() or "default"
    if key not in PROFILES:
        raise ValueError(f"{name}={value!r} is not a profile; use one of {', '.join(PROFILES)}")
    return key  # type: ignore[return-value]


def get_profile() -> Profile:
    """The active profile from ``$GALCORE_PROFILE`` (``default`` when unset)."""
    return _validate(os.environ.get(ENV_VAR, "default"), ENV_VAR)


def use_profile(name: str) -> Profile:
    """Make ``name`` the active profile for this process (a notebook's kernel): validate it,
    set ``$GALCORE_PROFILE`` and return it (lower case)."""
    value = _validate(name, "profile")
    os.environ[ENV_VAR] = value
    return value


def choose(smoke: T, default: T, full: T | None = None, *, profile: Profile | None = None) -> T:
    """Pick the value for the active profile (``full`` falls back to ``default`` when omitted)."""
    p = profile or get_profile()
    if p == "smoke":
        return smoke
    if p == "full" and full is not None:
        return full
    return default
