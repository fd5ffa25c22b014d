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


def get_profile() -> Profile:
    """The active profile from ``$GALCORE_PROFILE`` (``default`` when unset)."""
    value = os.environ.get(ENV_VAR, "default").strip().lower() or "default"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; use one of {', '.join(PROFILES)}")
    return value  # type: ignore[return-value]


def choose(smoke: T, default: T, full: T | None = None, *, profile: Profile | None = None) -> T:
    """Pick the value for the active profile (``full`` falls back to ``default`` when omitted)."""
    p = profile or get_profile()
    if p == "smoke":
        return smoke
    if p == "full" and full is not None:
        return full
    return default
