"""Granularities: which elements share one scale. Inside the library every one becomes a block shape.

`to_blocks(x, g)` returns a 2-D view `(num_blocks, block_size)`; one scale (and zero point) per row.
`from_blocks` undoes it. Two-level granularities (`PerVector`, `MXBlock`) block like `PerGroup` and differ
only in how the per-block scales are stored (see `lowbit.core.qparams`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index of `axis` (output channels of a weight: axis 0; channels of an NCHW activation: axis 1)."""

    axis: int = 0


@dataclass(frozen=True)
class PerGroup:
    """One scale per `size` consecutive elements along `axis` (per-block / group-wise weights, e.g. 128)."""

    size: int
    axis: int = -1

    def __post_init__(self) -> None:
        _check_size("PerGroup", self.size)


@dataclass(frozen=True)
class PerToken:
    """One scale per token: every index of all axes but the last (feature) axis. Computed at run time."""


@dataclass(frozen=True)
class PerVector:
    """Two-level scales (VS-Quant, Dai et al. 2021): an unsigned `scale_bits` integer sub-scale per `size`
    elements, under one float scale per output channel (axis 0 of the tensor's leading dimension)."""

    size: int = 16
    scale_bits: int = 4
    axis: int = -1

    def __post_init__(self) -> None:
        _check_size("PerVector", self.size)
        if not 2 <= self.scale_bits <= 8:
            raise ValueError(f"PerVector scale_bits must be in [2, 8], got {self.scale_bits}")


@dataclass(frozen=True)
class MXBlock:
    """Microscaling (OCP MX): `size` elements share one power-of-two scale stored as an 8-bit exponent."""

    size: int = 32
    axis: int = -1

    def __post_init__(self) -> None:
        _check_size("MXBlock", self.size)


Granularity = PerTensor | PerChannel | PerGroup | PerToken | PerVector | MXBlock
GROUPED = (PerGroup, PerVector, MXBlock)


def _check_size(kind: str, size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{kind} size must be a positive integer, got {size!r}")


def _norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def num_blocks(shape: tuple[int, ...], g: Granularity) -> int:
    """How many scales a tensor of `shape` needs under `g`."""
    numel = 1
    for d in shape:
        numel *= d
    if isinstance(g, PerTensor):
        return 1
    if isinstance(g, PerChannel):
        return shape[_norm_axis(g.axis, len(shape))]
    if isinstance(g, PerToken):
        return numel // shape[-1] if shape else 1
    return numel // g.size


def to_blocks(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """Reshape `x` to `(num_blocks, block_size)`; each row shares one scale."""
    if x.dim() == 0:
        return x.reshape(1, 1)  # (1, 1)
    if isinstance(g, PerTensor):
        return x.reshape(1, -1)  # (1, numel)
    if isinstance(g, PerChannel):
        axis = _norm_axis(g.axis, x.dim())
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, numel / C)
    if isinstance(g, PerToken):
        return x.reshape(-1, x.shape[-1])  # (tokens, features)
    if isinstance(g, GROUPED):
        axis = _norm_axis(g.axis, x.dim())
        if x.shape[axis] % g.size:
            divisors = [d for d in range(1, x.shape[axis] + 1) if x.shape[axis] % d == 0]
            raise ValueError(
                f"group size {g.size} does not divide dimension {x.shape[axis]} (axis {g.axis}) of a tensor "
                f"of shape {tuple(x.shape)}; pick a divisor such as {divisors[-4:]}"
            )
        return x.movedim(axis, -1).reshape(-1, g.size)  # (numel / size, size)
    raise TypeError(f"unknown granularity {g!r}")


def from_blocks(xb: torch.Tensor, g: Granularity, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_blocks` for a tensor whose original shape was `shape`."""
    shape = tuple(shape)
    if not shape:
        return xb.reshape(())
    if isinstance(g, (PerTensor, PerToken)):
        return xb.reshape(shape)
    axis = _norm_axis(g.axis, len(shape))
    if isinstance(g, PerChannel):
        moved = (shape[axis],) + shape[:axis] + shape[axis + 1 :]
        return xb.reshape(moved).movedim(0, axis)  # back to `shape`
    moved = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return xb.reshape(moved).movedim(-1, axis)  # back to `shape`
