"""The adjustment network h: maps a vector of size C to a direction of size C.

The release uses a stack of ``nn.Linear`` layers with no activation between them; the
hidden widths depend on the number of outputs (GAL.md). :func:`release_hidden` gives those
widths, :func:`make_adjuster` builds the stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

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

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def _activation(spec: ActivationSpec) -> Callable[[], nn.Module] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            return _ACTIVATIONS[spec.lower()]
        except KeyError:
            raise ValueError(
                f"unknown activation {spec!r}; use one of {sorted(_ACTIVATIONS)}, a module "
                "factory, or None"
            ) from None
    if callable(spec):
        return spec
    raise TypeError(f"activation must be a name, a callable returning a module, or None; got {spec!r}")


def make_adjuster(
    output_dim: int, hidden: Sequence[int] = (), activation: ActivationSpec = None
) -> nn.Sequential:
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
        layers.append(nn.Linear(w_in, w_out))
        if act is not None and i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)
