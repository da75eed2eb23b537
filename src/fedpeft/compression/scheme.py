"""What a compressed delta is: the scheme (bits, rounding, groups, top-k, error feedback)
and the layout (keys and shapes) that sender and receiver share.

A scheme is checked when built, so every later step can trust it. The layout travels
only as a 64-bit fingerprint: the receiver already holds the adapter (the server served
it, the client holds the model), so key names need not be sent with every message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, get_args

from torch import Tensor

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.config.schema import CompressionConfig

Rounding = Literal["stochastic", "nearest"]
Half = Literal["fp16", "bf16"]
BITS = (32, 16, 8, 4, 2)
"""Bit widths a value can travel at: float32, a 16-bit float, or 8/4/2-bit integer codes."""
INTEGER_BITS = (8, 4, 2)

DeltaLayout = tuple[tuple[str, tuple[int, ...]], ...]
"""``(key, shape)`` of every tensor of an adapter, sorted by key: the order values travel in."""


def _check(ok: bool, field: str, expected: str, got: object) -> None:
    if not ok:
        raise FedpeftError(f"`compression.{field}` must be {expected}, got {got!r}.")


@dataclass(frozen=True)
class CompressionScheme:
    """How one direction's deltas are compressed.

    - ``bits``: 32 (float32), 16 (``half``: fp16 or bf16), or 8/4/2-bit integer codes with one
      bf16 scale per group.
    - ``rounding``: ``stochastic`` (unbiased, the default) or ``nearest``.
    - ``group_size``: values per scale, within each tensor; ``None`` = one scale per row (the
      last dimension). With ``topk`` the groups run over the kept values, so it must be set.
    - ``topk``: keep the ``⌈topk·n⌉`` largest-magnitude values of each tensor (None: all).
    - ``error_feedback``: the sender adds what the last message left out to the next one.
    """

    bits: int = 32
    rounding: Rounding = "stochastic"
    group_size: int | None = 64
    topk: float | None = None
    error_feedback: bool = True
    half: Half = "fp16"

    def __post_init__(self) -> None:
        _check(self.bits in BITS, "bits", f"one of {BITS}", self.bits)
        rounding = self.rounding
        _check(rounding in get_args(Rounding), "rounding", "stochastic or nearest", rounding)
        _check(self.half in get_args(Half), "half", "fp16 or bf16", self.half)
        size = self.group_size
        ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 1)
        _check(ok, "group_size", "a positive integer or per row", size)
        k = self.topk
        _check(k is None or 0 < k <= 1, "topk", "a fraction in (0, 1] or unset", k)
        if k is not None and size is None:
            raise FedpeftError(
                "`compression.group_size` cannot be per row with `compression.topk`: the kept "
                "values form no rows; set a group size such as 64."
            )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): how an instruction carries a client's scheme."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionScheme:
        """The scheme ``to_json`` wrote; anything else raises ``FedpeftError``."""
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (ValueError, TypeError) as e:
            raise FedpeftError(f"a compression scheme must be the JSON of one ({e}).") from None

    @property
    def identity(self) -> bool:
        """Every value travels exactly (float32, nothing dropped)."""
        return self.bits == 32 and self.topk is None

    @property
    def random(self) -> bool:
        """Encoding draws random numbers (stochastic rounding below 32 bits)."""
        return self.bits < 32 and self.rounding == "stochastic"

    @property
    def name(self) -> str:
        """A short label for tables, e.g. ``int4/g64/sr+top10%+ef``."""
        if self.bits == 32:
            value = "fp32"
        elif self.bits == 16:
            value = f"{self.half}/{'sr' if self.rounding == 'stochastic' else 'rn'}"
        else:
            group = "row" if self.group_size is None else f"g{self.group_size}"
            rnd = "sr" if self.rounding == "stochastic" else "rn"
            value = f"int{self.bits}/{group}/{rnd}"
        top = f"+top{self.topk * 100:g}%" if self.topk is not None else ""
        return value + top + ("+ef" if self.error_feedback and not self.identity else "")


def layout_of(state: Mapping[str, Tensor]) -> DeltaLayout:
    """The ``(key, shape)`` pairs of ``state``, sorted by key."""
    return tuple((key, tuple(int(d) for d in state[key].shape)) for key in sorted(state))


def fingerprint(layout: DeltaLayout) -> str:
    """16 hex digits of SHA-256 over the layout: a message meant for another adapter (other
    keys or shapes) is refused instead of being split at the wrong places."""
    text = json.dumps([[key, list(shape)] for key, shape in layout], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def configured(cfg: CompressionConfig, bits: int, up: bool = True) -> CompressionScheme:
    """The scheme ``[compression]`` describes at ``bits``; ``topk`` applies to client
    updates (``up``) only."""
    group = None if cfg.group_size == "row" else cfg.group_size
    topk = cfg.topk if up else None
    return CompressionScheme(bits, cfg.rounding, group, topk, cfg.error_feedback, cfg.half)


def scheme_for(cfg: CompressionConfig, bits: int, up: bool = True) -> CompressionScheme | None:
    """``configured(cfg, bits, up)``, or ``None`` when it would send every value as float32
    (the plain codec is used then, as before compression existed)."""
    scheme = configured(cfg, bits, up)
    return None if scheme.identity else scheme


def down_scheme(cfg: CompressionConfig) -> CompressionScheme | None:
    """The server → client scheme (``compression.bits_down``)."""
    return scheme_for(cfg, cfg.bits_down, up=False)


def up_scheme(cfg: CompressionConfig) -> CompressionScheme | None:
    """The client → server scheme; with ``bits_up = "adaptive"`` the allocation chooses the
    bits per client (``fedpeft.server.bits.choose_bits``) and calls ``scheme_for``."""
    if cfg.bits_up == "adaptive":
        raise FedpeftError(
            "`compression.bits_up` is 'adaptive': choose each client's bits with "
            "fedpeft.allocation.choose_bits, then build its scheme with scheme_for."
        )
    return scheme_for(cfg, cfg.bits_up, up=True)
