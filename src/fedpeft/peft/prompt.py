"""Soft prompts through Hugging Face ``peft``.

Prompt tuning (Lester et al., 2021) prepends ``l`` trainable token embeddings to the
input; prefix tuning (Li & Liang, 2021) prepends ``l`` trainable keys and values to every
attention layer (with grouped-query attention, keys and values of the key/value heads'
width, as PEFT builds them). The task head trains too.
"""

from __future__ import annotations

from typing import ClassVar

from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from pydantic import PositiveInt
from torch import nn

from fedpeft.peft.arch import Architecture
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import BOTH_TASKS, MethodSpec, Task, head_params_trainable


class PromptTuningSpec(MethodSpec):
    description: ClassVar[str] = "trainable input tokens"
    calls_base_linears: ClassVar[bool] = True
    image_families: ClassVar[frozenset[str]] = frozenset({"clip"})  # CoOp's learned context
    # ASSUMPTION: prompt tuning trails other methods on small models (Lester et al., 2021).
    gain_prior: ClassVar[float | None] = 0.55
    identity_at_init: ClassVar[bool] = False  # the prompt is new input
    # not QA: PEFT puts the virtual tokens before the input, so span targets would shift
    tasks: ClassVar[frozenset[Task]] = BOTH_TASKS

    num_virtual_tokens: PositiveInt = 20

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        if arch.family == "clip":  # CoOp: learned context in CLIP's class prompts
            head_params_trainable(model, arch)
            model.add_context(self.num_virtual_tokens)  # type: ignore[operator]
            return model
        config = PromptTuningConfig(
            task_type=TaskType(arch.peft_task or "SEQ_CLS"),
            num_virtual_tokens=self.num_virtual_tokens,
        )
        return get_peft_model(model, config)

    def trainable_params(self, arch: Architecture) -> int:
        return self.num_virtual_tokens * arch.hidden + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        """The ``l`` extra tokens go through every projection (and a decoder's per-token
        head) and lengthen attention. CLIP's context replaces the template's tokens (one for
        one when ``l`` is the template's length, the case modelled: 0 added)."""
        if arch.family == "clip":
            return 0
        p = self.num_virtual_tokens
        attention = arch.attention_flops(seq_len + p) - arch.attention_flops(seq_len)
        return p * (arch.per_token_flops() + arch.head_token_flops) + attention

    def token_counts(self, seq_len: int) -> tuple[int, int]:
        """The ``l`` prompt tokens lengthen both queries and keys."""
        return seq_len + self.num_virtual_tokens, seq_len + self.num_virtual_tokens


class PrefixTuningSpec(MethodSpec):
    description: ClassVar[str] = "trainable attention prefixes"
    calls_base_linears: ClassVar[bool] = True
    # ASSUMPTION: between prompt tuning and LoRA at small scale (Li & Liang, 2021).
    gain_prior: ClassVar[float | None] = 0.6
    identity_at_init: ClassVar[bool] = False  # the prefix adds keys every query attends to

    num_virtual_tokens: PositiveInt = 10

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        config = PrefixTuningConfig(
            task_type=TaskType(arch.peft_task or "SEQ_CLS"),
            num_virtual_tokens=self.num_virtual_tokens,
        )
        return get_peft_model(model, config)

    def trainable_params(self, arch: Architecture) -> int:
        return self.num_virtual_tokens * 2 * arch.layers * arch.kv_dim + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        """Every query attends to ``l`` more keys and values."""
        extra = arch.attention_flops(seq_len, self.num_virtual_tokens)
        return extra - arch.attention_flops(seq_len)

    def token_counts(self, seq_len: int) -> tuple[int, int]:
        """The ``l`` prefix keys lengthen the keys only."""
        return seq_len, seq_len + self.num_virtual_tokens


register_method("prompt", PromptTuningSpec)
register_method("prefix", PrefixTuningSpec)
