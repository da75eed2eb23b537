"""What every PEFT method knows about itself: its options, and its facts as class attributes.

A spec is a small frozen pydantic model of the method's options. Its class also carries the
facts the rest of fedpeft asks about the method, so adding one is one file and one
registration, never an edit to a side table:

- where it applies: ``image_families`` (every text family takes every method) and ``tasks``;
- what the allocation assumes before observing it: ``gain_prior``;
- what it costs, from the model's ``Architecture`` alone: trainable and added parameters,
  update bytes, forward FLOPs (per example and per batch), the tokens attention sees, the
  blocks backprop goes through, whether frozen base weights get gradients;
- how its state folds into a heterogeneous group's envelope: ``envelope_group``,
  ``envelope_alpha`` and ``envelope``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from fedpeft.peft.arch import Architecture

Kind = Literal["reparameterised", "additive", "selective", "baseline"]
Task = Literal["classify", "instruct", "qa", "itm", "vqa", "detect"]
BOTH_TASKS: frozenset[Task] = frozenset({"classify", "instruct"})
ALL_TASKS: frozenset[Task] = frozenset({"classify", "instruct", "qa", "itm", "vqa", "detect"})


class MethodSpec(BaseModel):
    """Base class of every method's options; subclasses add validated fields and facts."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    kind: ClassVar[Kind] = "additive"
    description: ClassVar[str] = ""
    image_families: ClassVar[frozenset[str]] = frozenset()  # text families take every method
    # "instruct": causal-LM instruction tuning; "qa": extractive QA (a span head on every
    # token); "itm": CLIP matching images and texts (no head); "vqa": ViLT's answer head;
    # "detect": YOLOS' class and box heads
    tasks: ClassVar[frozenset[Task]] = ALL_TASKS
    # Prior expected gain R in the allocation's normalised units (½ = no gain); None: the
    # allocation's ``gain.default_prior``. An ASSUMPTION each method states with its source.
    gain_prior: ClassVar[float | None] = None
    identity_at_init: ClassVar[bool] = True  # an untrained adapter leaves outputs unchanged
    trains_base: ClassVar[bool] = False  # frozen base weights get gradients (full fine-tuning)
    # The method only calls the base's linear layers (never reads, rewrites or trains their
    # weights), so under bf16 autocast they may be stored in bf16 (models/precision.py)
    calls_base_linears: ClassVar[bool] = False
    envelope_group: ClassVar[str | None] = None  # candidates sharing one group envelope

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        """The model with only this method's parameters (and the task head) trainable."""
        raise NotImplementedError

    def trainable_params(self, arch: Architecture) -> int:
        raise NotImplementedError

    def added_params(self, arch: Architecture) -> int:
        """Parameters and buffers the method adds to the model (its trainable ones less
        the head's; a selective method adds none)."""
        return self.trainable_params(arch) - arch.head_params

    def update_bytes(self, arch: Architecture, bytes_per_param: int = 4) -> int:
        """Raw tensor bytes of one update (float32 by default; the codec adds a header)."""
        return self.trainable_params(arch) * bytes_per_param

    def down_only_bytes(self, arch: Architecture, bytes_per_param: int = 4) -> int:
        """Bytes a payload carries beside the update that the reply does not send back
        (FLoRA's merged sums); 0 for most methods."""
        return 0

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        """Forward FLOPs added for a batch of one example of ``seq_len`` tokens."""
        return 0

    def batch_flops(self, arch: Architecture) -> int:
        """The part of ``extra_flops`` that runs once per batch, whatever its size."""
        return 0

    def train_flops(self, arch: Architecture, seq_len: int) -> int:
        """Forward FLOPs added for one example in training (dropout may cost more than in
        evaluation), without the once-per-batch part."""
        return self.extra_flops(arch, seq_len) - self.batch_flops(arch)

    def token_counts(self, seq_len: int) -> tuple[int, int]:
        """(query tokens, key tokens) attention sees for ``seq_len`` input tokens."""
        return seq_len, seq_len

    def lowest_trained_block(self, arch: Architecture) -> int | None:
        """The lowest transformer block with trained parameters (backprop runs from the top
        down to it); ``None`` when only the task head trains."""
        return self._lowest_block(arch, None)

    def _lowest_block(self, arch: Architecture, layers: Sequence[int] | None) -> int | None:
        """For a method placed in ``layers`` (``None``: every block)."""
        if self.trainable_params(arch) <= arch.head_params:
            return None
        inside = [i for i in (layers or [0]) if i < arch.layers]
        return min(inside) if inside else None

    def envelope_alpha(self) -> float | None:
        """The scale with which a group envelope keeps this method's factors in effective
        units (LoRA: α of ``ΔW = (α/r)·BA``); ``None``: states are averaged as trained."""
        return None

    @classmethod
    def envelope(cls, members: Sequence[MethodSpec]) -> MethodSpec:
        """The configuration a group envelope of ``members`` is evaluated at; a group
        without an ``envelope_group`` has one configuration, its first member's."""
        return members[0]


def head_params_trainable(model: nn.Module, arch: Architecture) -> None:
    """Freezes every parameter, then unfreezes the task head (in place) unless it is one
    that stays frozen (``head_params == 0``: a causal LM's output layer)."""
    for name, p in model.named_parameters():
        head = any(name.startswith(h + ".") for h in arch.head_names)
        p.requires_grad_(arch.head_params > 0 and head)
