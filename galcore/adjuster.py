"""The adjustment network h: maps a vector of size C to a direction of size C.

The release uses a stack of ``nn.Linear`` layers with no activation between them; the
hidden widths depend on the number of outputs (the release's code). :func:`release_hidden` gives those
widths, :func:`make_adjuster` builds the stack, and :class:`LinearStack` is that stack as GAL
holds it: its weights in one flat parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: Hidden widths of h in the public release, keyed by the output size C.
RELEASE_HIDDEN: dict[int, tuple[int, ...]] = {
    2: (64, 24),  # 3D toy: 2 -> 64 -> 24 -> 2
    10: (100, 32, 16),  # CIFAR-10: 10 -> 100 -> 32 -> 16 -> 10
    100: (256, 64, 32),  # CIFAR-100: 100 -> 256 -> 64 -> 32 -> 100
    1000: (512, 256),  # ImageNet: 1000 -> 512 -> 256 -> 1000
}


def release_hidden(output_dim: int) -> tuple[int, ...]:
    """Hidden widths of h for ``output_dim`` outputs.

    The release's widths where it has them (C = 2, 10, 100, 1000); otherwise the CIFAR-10
    shape ``(100, 32, 16)`` for C <= 32 and ``(4C, C, C // 2)`` (at least 16 wide) above.
    """
    if output_dim in RELEASE_HIDDEN:
        return RELEASE_HIDDEN[output_dim]
    if output_dim <= 32:
        return (100, 32, 16)
    return (4 * output_dim, output_dim, max(16, output_dim // 2))


ActivationSpec = str | Callable[[], nn.Module] | None

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _activation(spec: ActivationSpec) -> Callable[[], nn.Module] | None:
    if spec is None or callable(spec):  # a str is not callable
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"activation must be a name, a callable returning a module, or None; got {spec!r}")
    if spec.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; use one of {sorted(_ACTIVATIONS)}, a module factory, or None")
    return _ACTIVATIONS[spec.lower()]


def make_adjuster(output_dim: int, hidden: Sequence[int] = (), activation: ActivationSpec = None) -> nn.Sequential:
    """Build h: ``output_dim -> hidden[0] -> ... -> output_dim``.

    With ``activation=None`` (the release) the layers are plain ``nn.Linear`` in order, so
    ``list(h.parameters())`` is ``[W0, b0, W1, b1, ...]``. With an activation, one is placed
    between consecutive linear layers (not after the last).
    """
    if output_dim < 1:
        raise ValueError(f"output_dim must be >= 1, got {output_dim}")
    widths = [int(output_dim), *(int(w) for w in hidden), int(output_dim)]
    if any(w < 1 for w in widths):
        raise ValueError(f"hidden widths must be >= 1, got {tuple(hidden)}")
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(w_in, w_out)] + ([act()] if act is not None and i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


#: Multiply-adds per forward that multiplying out h's affine map must save to pay for its six extra
#: small matrix products (about 2^18 on a 2-core CPU; on a GPU kernel launches dominate at these sizes)
COLLAPSE_CPU, COLLAPSE_OTHER = 2**18, 2**24


class LinearStack(nn.Sequential):
    """h as GAL holds it: the layers of :func:`make_adjuster` with all their weights and biases in
    one flat parameter, :attr:`flat` (one tensor for the optimizer and for DDP's all-reduce).

    ``h[i].weight`` and ``h[i].bias`` are views of layer i's part of ``flat`` (read and write them
    in place), and ``state_dict()`` keeps the plain stack's keys (``0.weight``, ``0.bias``...):
    state dicts load from and into a plain ``nn.Sequential``. Layer i is stored as ``weight.T``
    (``in x out``) then ``bias``. Without activations h is one affine map ``x @ M + c``, and
    :meth:`forward` multiplies out ``M`` and ``c`` first when that saves enough multiply-adds
    (same function and gradients, rounded differently).
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        lins = [m for m in self if isinstance(m, nn.Linear)]
        if not lins or any(m.bias is None for m in lins):
            raise ValueError("LinearStack needs nn.Linear layers with biases")
        self._dims = [(m.in_features, m.out_features) for m in lins]
        self._affine = len(lins) == len(self)  # no activation: one affine map
        self.flat = nn.Parameter(torch.cat([t for m in lins for t in (m.weight.detach().t().flatten(), m.bias.detach())]))
        for m in lins:
            del m.weight, m.bias
        self._link()

    def parts(self, flat: Tensor) -> list[Tensor]:
        """``[W0.T, b0, W1.T, b1, ...]`` as views of ``flat``, shaped ``(in, out)`` and ``(out,)``."""
        parts = list(flat.split_with_sizes([n for i, o in self._dims for n in (i * o, o)]))
        parts[0::2] = [w.view(i, o) for w, (i, o) in zip(parts[0::2], self._dims, strict=True)]
        return parts

    def _link(self) -> None:
        """Point every layer's ``weight`` / ``bias`` at its part of :attr:`flat` (no graph)."""
        parts = iter(self.parts(self.flat.detach()))  # views of a detached alias: no autograd view tracking
        for m in (m for m in self if isinstance(m, nn.Linear)):
            m.weight, m.bias = next(parts).t(), next(parts)

    def forward(self, x: Tensor, parts: Sequence[Tensor] | None = None) -> Tensor:
        """h on the last dimension of ``x``; ``parts`` stand in for :meth:`parts` of :attr:`flat`
        (GAL passes them through its gradient gate, in its compute dtype)."""
        parts = self.parts(self.flat) if parts is None else parts
        z = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        rows, c_in = x.numel() // x.shape[-1], self._dims[0][0]
        saved = rows * (sum(i * o for i, o in self._dims) - c_in * self._dims[-1][1])
        saved -= sum(c_in * i * o for i, o in self._dims[1:])  # layer by layer minus multiplied out
        if self._affine and saved > (COLLAPSE_CPU if x.device.type == "cpu" else COLLAPSE_OTHER):
            m, c = parts[0], parts[1].view(1, -1)
            for w, b in zip(parts[2::2], parts[3::2], strict=True):
                m, c = m @ w, torch.addmm(b, c, w)
            z = torch.addmm(c, z, m)
        else:
            weights = iter(parts)
            for module in self:
                if isinstance(module, nn.Linear):
                    w, b = next(weights), next(weights)
                    z = torch.addmm(b, z, w)
                else:
                    z = module(z)
        return z if x.ndim == 2 else z.view(*x.shape[:-1], z.shape[-1])

    def _apply(self, fn: Any, recurse: bool = True) -> LinearStack:
        super()._apply(fn, recurse)
        self._link()  # .to() / .double() may have given flat new data
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._link()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for name, m in self._modules.items():
            for t in ("weight", "bias") if isinstance(m, nn.Linear) else ():
                destination[f"{prefix}{name}.{t}"] = getattr(m, t) if keep_vars else getattr(m, t).detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                              missing: list[str], unexpected: list[str], errors: list[str]) -> None:
        for name, m in self._modules.items():
            for t in ("weight", "bias") if isinstance(m, nn.Linear) else ():
                key, target = f"{prefix}{name}.{t}", getattr(m, t)
                if key not in state_dict:
                    missing.append(key)
                elif state_dict[key].shape != target.shape:
                    errors.append(f"size mismatch for {key}: {tuple(state_dict[key].shape)} vs {tuple(target.shape)}")
                else:
                    with torch.no_grad():
                        target.copy_(state_dict.pop(key))
        if strict:
            unexpected += [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".")[0] not in self._modules]
