"""K clients in one pass over the shared base (grouped LoRA), so small clients fill a GPU.

The active clients' batches are stacked into one batch (each padded to the group's row
count and width; padding rows copy a real row and weigh nothing) and run through the base
once. Every LoRA projection adds each client's own low-rank update with two batched
matmuls over stacked factors, ``h_k = W₀x_k + (α/r)·B_k A_k x_k`` (Hu et al., 2021), and
the task head is a batched linear map per client. The loss is the sum of the clients'
own mean losses, so each client's factors get exactly its own gradient, and AdamW, being
elementwise, updates each client's slice as it would alone. A client that has taken all
its steps is read out before the next step; the others go on.

What differs from training the clients one by one: dropout masks come from one stream for
the group, not from each client's (the same seeds still give the same run), and padding to
a common width changes float rounding. With dropout off the updates match sequential
training to float tolerance (``tests/test_grouped.py``). Only plain LoRA with a linear
head is grouped; anything else trains one client at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from fedpeft.client import ClientData, derive_seed
from fedpeft.data import Batch, ImageBatch, OwnLossBatch
from fedpeft.types import TrainInstruction


def local_batches(ins: TrainInstruction, data: ClientData) -> Iterator[Batch | ImageBatch]:
    """The batches a client trains on, in order — exactly those of ``client.train``: its
    epochs (or steps) of seeded, length-bucketed batches."""
    rng = np.random.default_rng(derive_seed(ins.seed, ins.round, ins.client_id))
    n_batches = max(1, -(-len(data.indices) // ins.batch_size))
    max_steps = ins.steps or ins.epochs * n_batches
    steps = 0
    while steps < max_steps:
        for batch in data.split.train_batches(data.indices, ins.batch_size, rng):
            if isinstance(batch, OwnLossBatch):  # the pool groups classifiers only (group_fit)
                raise TypeError("grouped LoRA trains classification batches only")
            yield batch
            steps += 1
            if steps >= max_steps:
                return


def group_key(ins: TrainInstruction) -> tuple[object, ...]:
    """Clients train together only under the same hyperparameters and configuration."""
    return (ins.method, ins.options, ins.batch_size, ins.lr, ins.weight_decay,
            ins.proximal_mu, ins.freeze, ins.round)  # fmt: skip


@dataclass
class _Slot:
    """The group's current step: which clients are active (their rows, in order)."""

    active: torch.Tensor  # indices into the stacked parameters


class GroupedLora:
    """One LoRA model replica over the shared base, trained for K clients at once."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.slot = _Slot(torch.zeros(0, dtype=torch.long))
        self.keys = self._owners()  # adapter key → (module, parameter name)
        self.stacked: dict[str, nn.Parameter] = {}
        self._patch()

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Plain LoRA (no DoRA or other variant) whose other trained tensors are linear."""
        if not isinstance(model, PeftModel):
            return False
        try:
            GroupedLora._owners_of(model)
        except ValueError:
            return False
        return True

    def _owners(self) -> dict[str, tuple[nn.Module, str]]:
        return self._owners_of(self.model)

    @staticmethod
    def _owners_of(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        by_ptr = {}
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                by_ptr[p.data_ptr()] = (module, name)
        owners: dict[str, tuple[nn.Module, str]] = {}
        for key, tensor in get_peft_model_state_dict(model).items():
            module, name = by_ptr[tensor.data_ptr()]
            if not isinstance(module, nn.Linear):
                raise ValueError(f"{key} is not a linear layer's")
            owners[key] = (module, name)
        for layer in model.modules():
            if isinstance(layer, LoraLinear) and (
                layer.lora_variant or any(layer.use_dora.values())
            ):
                raise ValueError("a LoRA variant (DoRA) is not grouped")
        return owners

    def load(self, states: Sequence[dict[str, torch.Tensor]], trainable: set[str]) -> None:
        """Stacks the clients' starting states; keys outside ``trainable`` stay fixed."""
        device = next(self.model.parameters()).device
        self.stacked = {
            key: nn.Parameter(
                torch.stack([s[key] for s in states]).to(device), requires_grad=key in trainable
            )
            for key in self.keys
        }

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Client ``k``'s current state (a detached CPU copy)."""
        return {key: p[k].detach().cpu().clone() for key, p in self.stacked.items()}

    def _patch(self) -> None:
        """Every LoRA projection and every other trained linear layer (the head) of the
        replica computes per client from the stacked tensors (in place, names unchanged)."""
        key_of = {id(m): k for k, (m, _) in self.keys.items()}  # a weight's key per module
        factors = set()
        for layer in self.model.modules():
            if isinstance(layer, LoraLinear):
                a, b = layer.lora_A["default"], layer.lora_B["default"]
                factors |= {id(a), id(b)}
                grouped = self._grouped_lora(layer, key_of[id(a)], key_of[id(b)])
                layer.forward = grouped  # type: ignore[method-assign]
        for key, (module, name) in self.keys.items():
            if id(module) not in factors and name == "weight":
                module.forward = self._grouped_linear(key, key.removesuffix("weight") + "bias")

    def _grouped_lora(self, layer: LoraLinear, a: str, b: str) -> Callable[..., torch.Tensor]:
        dropout, scaling = layer.lora_dropout["default"], layer.scaling["default"]

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            result = layer.base_layer(x, *args, **kwargs)
            idx = self.slot.active
            fa, fb = self.stacked[a][idx], self.stacked[b][idx]  # (k, r, d_in), (k, d_out, r)
            xk = dropout(x).to(fa.dtype).reshape(len(idx), -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(xk, fa.transpose(1, 2)), fb.transpose(1, 2))
            return result + (delta * scaling).reshape(result.shape).to(result.dtype)

        return forward

    def _grouped_linear(self, w: str, b: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            idx = self.slot.active
            weight = self.stacked[w][idx]  # (k, out, in)
            xk = x.to(weight.dtype).reshape(len(idx), -1, x.shape[-1])
            out = torch.bmm(xk, weight.transpose(1, 2))
            if b in self.stacked:
                out = out + self.stacked[b][idx].unsqueeze(1)
            return out.reshape(*x.shape[:-1], weight.shape[1])

        return forward


def stack_batches(
    batches: Sequence[Batch], rows: int, pad_id: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The clients' batches as one: each padded to ``rows`` rows (copies of its first row,
    weight 0) and to the widest batch's width (``pad_id`` tokens, masked)."""
    width = max(b.input_ids.shape[1] for b in batches)
    ids, masks, labels, weights = [], [], [], []
    for b in batches:
        n, extra = len(b), rows - len(b)
        pad = (0, width - b.input_ids.shape[1])
        i = torch.nn.functional.pad(b.input_ids, pad, value=pad_id)
        m = torch.nn.functional.pad(b.attention_mask, pad, value=0)
        ids.append(torch.cat([i, i[:1].expand(extra, -1)]))
        masks.append(torch.cat([m, m[:1].expand(extra, -1)]))
        labels.append(torch.cat([b.labels, b.labels[:1].expand(extra)]))
        weights.append(torch.cat([torch.ones(n), torch.zeros(extra)]))
    inputs = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}
    return inputs | {"labels": torch.cat(labels)}, torch.cat(weights)
