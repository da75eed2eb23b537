"""IA3 through Hugging Face ``peft``: learned vectors rescale keys, values and the
feed-forward activations, ``k ↦ l_k ⊙ k`` (Liu et al., 2022). The task head trains too.

Default targets are PEFT's for the family: the key and value projections and the
feed-forward output projection (``Architecture.roles``), which scales its input, not its
output.
"""

from __future__ import annotations

from typing import ClassVar

from peft import IA3Config, TaskType, get_peft_model
from torch import nn

from fedpeft.errors import FedpeftError
from fedpeft.peft.arch import Architecture, Linear
from fedpeft.peft.lora import matches
from fedpeft.peft.registry import register_method
from fedpeft.peft.spec import MethodSpec


class IA3Spec(MethodSpec):
    description: ClassVar[str] = "learned rescaling vectors"
    calls_base_linears: ClassVar[bool] = True
    image_families: ClassVar[frozenset[str]] = frozenset({"vit", "vilt"})
    # ASSUMPTION: below LoRA at small scale, above prompt-style methods (Liu et al., 2022).
    gain_prior: ClassVar[float | None] = 0.65

    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    def _targets(self, arch: Architecture) -> list[str]:
        roles = arch.roles
        return self.target_modules or list(roles.key + roles.value + roles.feedforward)

    def _feedforward(self, arch: Architecture) -> list[str]:
        if self.feedforward_modules is not None:
            return self.feedforward_modules
        return list(arch.roles.feedforward) if self.target_modules is None else []

    def vectors(self, arch: Architecture) -> list[tuple[Linear, int]]:
        out = []
        for lin in arch.linears:
            if any(matches(lin.name, t) for t in self._targets(arch)):
                ff = any(matches(lin.name, t) for t in self._feedforward(arch))
                out.append((lin, lin.d_in if ff else lin.d_out))
        return out

    def apply(self, model: nn.Module, arch: Architecture) -> nn.Module:
        if not self.vectors(arch):
            raise FedpeftError(
                f"`peft.target_modules` {self._targets(arch)} matches no projection of this "
                f"model; its projections end in e.g. {_suffixes(arch)}."
            )
        config = IA3Config(
            task_type=TaskType(arch.peft_task or "SEQ_CLS"),
            target_modules=self._targets(arch),
            feedforward_modules=self._feedforward(arch),
        )
        return get_peft_model(model, config)

    def trainable_params(self, arch: Architecture) -> int:
        return sum(size for _, size in self.vectors(arch)) + arch.head_params

    def extra_flops(self, arch: Architecture, seq_len: int) -> int:
        return seq_len * sum(size for _, size in self.vectors(arch))


def _suffixes(arch: Architecture) -> str:
    names = dict.fromkeys(
        lin.name.rsplit(".", 2)[-2] + "." + lin.name.rsplit(".", 1)[-1] for lin in arch.linears
    )
    return ", ".join(list(names)[:6])


register_method("ia3", IA3Spec)
