"""S models of one architecture as (S, ...) tensors, and h of S GAL runs likewise: the
arithmetic of :mod:`galcore.experiments.harness.stacked`.

- :class:`StackedModel`: the S models' parameters as (S, ...) leaves named like
  ``model.named_parameters()``; calling it maps (S, B, ...) inputs to (S, B, C) outputs with the
  ``"unfold"`` engine (Conv1d as im2col + ``baddbmm`` in channels-last layout, Linear as
  ``baddbmm``; chains of Conv1d / ReLU / Flatten / Linear) or ``"vmap"`` (``torch.func.vmap``
  over ``functional_call``; any model without dropout or batch norm).
- :class:`StackedH`: S release-style h (``LinearStack``) as one (S, P) leaf, with
  ``LinearStack.forward``'s arithmetic batched (and its rule for multiplying the stack out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from galcore.adjuster import COLLAPSE_CPU, COLLAPSE_OTHER, LinearStack

__all__ = ["ENGINES", "StackedH", "StackedModel"]

ENGINES = ("auto", "unfold", "vmap")


def _unfold_plan(model: nn.Module, probe: Tensor) -> list[tuple[str, str, nn.Module]] | None:
    """``[(kind, parameter prefix, module)]`` when ``model``'s leaf modules, in order, are a chain
    of Conv1d / ReLU / Flatten / Linear and that chain computes ``model(probe)`` (e.g.
    ``MNIST1DCNN``, an ``nn.Sequential``); else ``None``."""
    plan: list[tuple[str, str, nn.Module]] = []
    for prefix, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        if type(m) is nn.Conv1d and m.groups == 1 and m.dilation == (1,) and m.padding_mode == "zeros" \
                and isinstance(m.padding, tuple) and m.bias is not None:
            plan.append(("conv", prefix, m))
        elif type(m) is nn.Linear and m.bias is not None:
            plan.append(("linear", prefix, m))
        elif type(m) is nn.ReLU:
            plan.append(("relu", prefix, m))
        elif type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten", prefix, m))
        else:
            return None
    if not plan:
        return None
    with torch.no_grad():  # the chain must be what forward computes (a model could reorder its children)
        try:
            want = model(probe)
            got = _unfold_forward(plan, {n: p.unsqueeze(0) for n, p in model.named_parameters()}, probe.unsqueeze(0))[0]
        except (RuntimeError, ValueError, IndexError):
            return None
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return None
    return plan


class _Im2col(torch.autograd.Function):
    """im2col of a channels-last 1-D batch: (S, B, L, C) -> (S, B, L', k C), column block j holding
    tap j (zero padding ``pad``, stride ``step``). Its backward adds the k blocks back into one
    buffer: several times cheaper than ``Tensor.unfold``'s, and cheaper than pad + cat."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, k: int, step: int, pad: int) -> Tensor:
        s, b, length, c = z.shape
        out_len = (length + 2 * pad - k) // step + 1
        u = z.new_zeros(s, b, out_len, k * c)
        spans = []
        for j in range(k):  # output positions l whose input step*l + j - pad lies inside [0, length)
            lo, hi = max(0, -(-(pad - j) // step)), min(out_len - 1, (length - 1 + pad - j) // step)
            spans.append((lo, hi, step * lo + j - pad, step * hi + j - pad))
            u[:, :, lo : hi + 1, j * c : (j + 1) * c] = z[:, :, spans[-1][2] : spans[-1][3] + 1 : step]
        ctx.spans, ctx.shape, ctx.step = spans, z.shape, step
        return u

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gz = grad.new_zeros(ctx.shape)
        c = ctx.shape[-1]
        for j, (lo, hi, first, last) in enumerate(ctx.spans):
            gz[:, :, first : last + 1 : ctx.step] += grad[:, :, lo : hi + 1, j * c : (j + 1) * c]
        return gz, None, None, None


def _unfold_forward(plan: list[tuple[str, str, nn.Module]], p: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """The chain on a (S, B, ...) batch with (S, ...) weights: Conv1d in channels-last layout
    (S, B, L, C) as im2col + ``baddbmm``, Linear as ``baddbmm``. Returns (S, B, out).

    im2col is :class:`_Im2col`; after Flatten the next Linear's weight is permuted to the
    channels-last order instead of transposing the activations."""
    s, b = x.shape[:2]
    z = x.unsqueeze(2) if x.ndim == 3 and plan[0][0] == "conv" else x  # MNIST1DCNN accepts (B, L)
    last = False  # z is (S, B, L, C)
    flat: tuple[int, int] | None = None  # (C, L) of a channels-last flatten, for the next Linear
    for kind, prefix, m in plan:
        if kind == "conv":
            if z.ndim != 4:
                raise ValueError(f"Conv1d needs (B, C, L) inputs, got {tuple(z.shape[1:])}")
            if not last:
                z, last = z.transpose(2, 3), True
            w, bias = p[f"{prefix}.weight"], p[f"{prefix}.bias"]
            c_out, c_in, k = w.shape[1:]
            pad, step = m.padding[0], m.stride[0]
            u = _Im2col.apply(z, k, step, pad)  # (S, B, L', k C_in)
            length = u.shape[2]
            wk = w.permute(0, 3, 2, 1).reshape(s, k * c_in, c_out)  # rows (tap, channel), as u's columns
            z = torch.baddbmm(bias.unsqueeze(1), u.view(s, b * length, k * c_in), wk).view(s, b, length, c_out)
        elif kind == "relu":
            z = torch.relu(z)
        elif kind == "flatten":
            if last:
                flat, last = (z.shape[3], z.shape[2]), False
            z = z.reshape(s, b, -1)
        else:
            w = p[f"{prefix}.weight"]
            if flat is not None:  # PyTorch flattens (C, L); z holds (L, C)
                w, flat = w.view(s, w.shape[1], *flat).transpose(2, 3).reshape(s, w.shape[1], -1), None
            z = torch.baddbmm(p[f"{prefix}.bias"].unsqueeze(1), z, w.transpose(1, 2))
    return z


class StackedModel:
    """S models as (S, ...) leaf tensors named like ``model.named_parameters()``."""

    def __init__(self, models: list[nn.Module], engine: str, probe: Tensor) -> None:
        base = models[0]
        for m in base.modules():
            if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)):
                raise TypeError(f"model_fn: stacked runs need a model without dropout or batch norm; {type(m).__name__} found")
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]
        self.params = {n: torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_(True) for n in self.names}
        self.buffers = {n: torch.stack([m.get_buffer(n).detach() for m in models]) for n, _ in base.named_buffers()}
        plan = _unfold_plan(base, probe) if engine in ("auto", "unfold") and not self.buffers else None
        if engine == "unfold" and plan is None:
            raise ValueError(f"engine='unfold' needs a chain of Conv1d/ReLU/Flatten/Linear, got {type(base).__name__}")
        self.plan = plan
        self.engine = "unfold" if plan is not None else "vmap"

    def __call__(self, x: Tensor) -> Tensor:
        """(S, B, ...) inputs -> (S, B, C) outputs."""
        if self.plan is not None:
            return _unfold_forward(self.plan, self.params, x)
        fn = lambda p, bufs, xs: functional_call(self.base, (p, bufs), (xs,))
        return vmap(fn)(self.params, self.buffers, x)

    def write_back(self, models: list[nn.Module]) -> None:
        with torch.no_grad():
            for i, m in enumerate(models):
                for n in self.names:
                    m.get_parameter(n).copy_(self.params[n][i])


class StackedH:
    """The S seeds' h (the release's LinearStack, each its own ``flat``) as one (S, P) leaf."""

    def __init__(self, hs: list[LinearStack], trainable: bool) -> None:
        self.layers = list(hs[0])
        self.dims = [(m.in_features, m.out_features) for m in self.layers if isinstance(m, nn.Linear)]
        self.affine = len(self.dims) == len(self.layers)
        self.flat = torch.stack([h.flat.detach() for h in hs]).requires_grad_(trainable)

    def parts(self, flat: Tensor) -> list[Tensor]:
        s = flat.shape[0]
        parts = list(flat.split_with_sizes([n for i, o in self.dims for n in (i * o, o)], dim=1))
        parts[0::2] = [w.reshape(s, i, o) for w, (i, o) in zip(parts[0::2], self.dims, strict=True)]
        parts[1::2] = [b.reshape(s, 1, o) for b, (_, o) in zip(parts[1::2], self.dims, strict=True)]
        return parts

    def __call__(self, parts: list[Tensor], x: Tensor) -> Tensor:
        """h_s on (S, R, C): ``LinearStack.forward``'s arithmetic with its rule for multiplying out."""
        rows, c_in = x.shape[1], self.dims[0][0]
        saved = rows * (sum(i * o for i, o in self.dims) - c_in * self.dims[-1][1])
        saved -= sum(c_in * i * o for i, o in self.dims[1:])
        if self.affine and saved > (COLLAPSE_CPU if x.device.type == "cpu" else COLLAPSE_OTHER):
            m, c = parts[0], parts[1]
            for w, b in zip(parts[2::2], parts[3::2], strict=True):
                m, c = torch.bmm(m, w), torch.baddbmm(b, c, w)
            return torch.baddbmm(c, x, m)
        weights, z = iter(parts), x
        for module in self.layers:
            if isinstance(module, nn.Linear):
                w, b = next(weights), next(weights)
                z = torch.baddbmm(b, z, w)
            else:
                z = module(z)
        return z
