"""GAL's state dict: the options travel with h's weights and the counters, and a load is all or
nothing (everything is checked before anything is applied)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from galcore.config import GALConfig


class StateMixin(nn.Module):
    """``get_extra_state``/``set_extra_state`` and an all-or-nothing ``load_state_dict`` for a GAL
    module (it has ``config``, ``output_dim``, ``_built_h`` and ``_widths``)."""

    config: GALConfig
    output_dim: int
    _built_h: bool

    def _widths(self, config: GALConfig) -> tuple[int, ...]:
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        """Options travel with h's weights and the counters in ``state_dict()``."""
        return {"config": self.config.to_dict(), "output_dim": self.output_dim}

    def _read_extra(self, state: Any) -> tuple[GALConfig, int]:
        if not isinstance(state, dict):
            raise TypeError(f"GAL's extra state must be a dict, got {type(state).__name__}")
        if "config" not in state:  # galcore 0.1: the options at the top level
            state = {"config": {k: v for k, v in state.items() if k in GALConfig.__dataclass_fields__}}
        return GALConfig.from_any(state["config"]), state.get("output_dim", self.output_dim)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        config, output_dim = self._read_extra(state)
        if output_dim != self.output_dim:
            raise ValueError(f"state_dict is for output_dim={output_dim}, this GAL has {self.output_dim}")
        self.config = config

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module``'s, but all or nothing: everything is checked first (sizes, options,
        ``output_dim``, h's ``hidden`` and ``activation``; with ``strict`` missing and unexpected
        keys), and a state dict that fails changes nothing."""
        self.__dict__["_strict_load"] = strict
        try:
            return super().load_state_dict(state_dict, strict, assign)
        finally:
            self.__dict__.pop("_strict_load", None)

    def _load_problems(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        problems, own = [], self.state_dict(keep_vars=True)
        if prefix + "_extra_state" in state_dict:
            try:
                config, output_dim = self._read_extra(state_dict[prefix + "_extra_state"])
            except (TypeError, ValueError) as err:
                return [f"{prefix}_extra_state: {err}"]
            if output_dim != self.output_dim:
                problems.append(f"the state dict is for output_dim={output_dim}, this GAL has {self.output_dim}")
            for name, theirs, mine in (("activation", config.activation, self.config.activation),
                                       ("hidden", self._widths(config), self._widths(self.config))):
                if self._built_h and theirs != mine:
                    problems.append(f"the state dict's h has {name}={theirs!r}, this GAL's h {name}={mine!r}: "
                                    f"build it with {name}={theirs!r} to load it")
        for k, v in own.items():
            w = state_dict.get(prefix + k)
            if isinstance(v, Tensor) and isinstance(w, Tensor) and w.shape != v.shape:
                problems.append(f"size mismatch for {prefix}{k}: {tuple(w.shape)} in the state dict, {tuple(v.shape)} here")
        if self.__dict__.get("_strict_load"):
            if missing := [prefix + k for k in own if prefix + k not in state_dict]:
                problems.append(f"missing key(s): {missing}")
            if unexpected := [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]:
                problems.append(f"unexpected key(s): {unexpected}")
        return problems

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        problems = self._load_problems(state_dict, prefix)
        if not problems:
            super()._load_from_state_dict(state_dict, prefix, *args)
            return
        args[-1].extend(f"GAL: {p}" for p in problems)  # error_msgs: load_state_dict raises them
        for k in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[k]
        # h below loads what it holds: nothing changes
        state_dict.update((prefix + k, v.clone() if isinstance(v, Tensor) else v) for k, v in self.state_dict().items())
