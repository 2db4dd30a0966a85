"""QATConfig: which method, how many bits, which layers stay at higher precision, how BatchNorm is handled.

BatchNorm policy (one policy, "fold-running"): during training every BatchNorm stays a separate module after
its conv/linear and normalises with batch statistics as usual, so the quantized weights see no folding noise.
`convert` folds each BatchNorm into the preceding layer with its *running* statistics (Jacob et al. 2018,
section 3.2, folded once training is over). Optionally `freeze_bn_after=N` switches every BatchNorm to its
running statistics (and stops updating them) after N training steps, the freezing trick of the same paper.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST = "@first"  # the first conv/linear in execution order
LAST = "@last"  # the last conv/linear in execution order
BN_POLICIES = ("fold-running",)


@dataclass(frozen=True)
class QATConfig:
    """method: a name in `lowbit.qat.METHODS` (ste, lsq, pact, dsq, binary-sign, binaryconnect, bwn, xnor,
    twn, ttq, kmeans). weight_bits / act_bits: bit widths (act_bits None keeps activations in float).
    skip: module-name globs (and the tokens "@first", "@last") of layers quantized with `skip_method` at
    `skip_bits` instead; by default the first and the last layer stay at 8 bits (W8A8, STE with EMA ranges).
    skip_bits None leaves the skipped layers in float."""

    method: str
    weight_bits: int = 8
    act_bits: int | None = 8
    skip: tuple[str, ...] = (FIRST, LAST)
    skip_bits: int | None = 8
    skip_method: str = "ste"
    bn: str = "fold-running"
    freeze_bn_after: int | None = None

    def __post_init__(self) -> None:
        if self.bn not in BN_POLICIES:
            raise ValueError(f"bn policy {self.bn!r} is not implemented; use one of {BN_POLICIES}")
        if isinstance(self.skip, str):
            raise TypeError(f"skip must be a tuple of globs, e.g. ({self.skip!r},), not a string")
        if self.freeze_bn_after is not None and self.freeze_bn_after < 0:
            raise ValueError("freeze_bn_after counts training steps and must be >= 0 (or None)")
