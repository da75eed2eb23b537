"""The client's side of an evaluation message: every model its personalisation plan defines,
scored on the client's own held-out share (``data.client_test_fraction``).

Scored models, each reported as ``<model>.accuracy`` and ``<model>.loss`` in the reply's
metrics (the reply carries no tensors):

- ``global``: the served global as it is (a clustered run: the client's cluster's). Not
  scored when the plan keeps part of the module local: without it there is no model.
- ``personal``: the served global joined with the client's personal part (``head``,
  ``lora_b``, ``dual``), or fine-tuned ``finetune_steps`` steps on the client's training
  share (FT-after-FL), which the client then keeps.
- ``local`` (baseline): the same PEFT module trained from its initialisation on the client's
  own training share alone, ``local_epochs`` epochs.
- ``full`` (baseline): the whole PEFT module fine-tuned from the served global (joined with
  the client's personal part, where it keeps one) for ``full_epochs`` epochs — what the
  client can get for itself, against which personalisation is measured.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from fedpeft.client.handler import (
    META_CLIENT_ID,
    META_METRICS,
    META_NONCE,
    META_NUM_EXAMPLES,
    META_ROUND,
    FitResult,
    split_extras,
)
from fedpeft.client.personal import (
    PersonalKit,
    PersonalPlan,
    kept_personal,
    merged_dual,
    personal_state,
    personalised,
    split_personal,
    with_personal,
)
from fedpeft.client.state import ClientState
from fedpeft.client.train import ClientData, derive_seed, train
from fedpeft.compression import decode, encode
from fedpeft.data import OwnLossBatch
from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state, save_adapter, set_adapter_state, state_numel
from fedpeft.peft.io import WEIGHTS
from fedpeft.peft.state import without_merged
from fedpeft.types import AdapterState, TrainInstruction

_LOCAL, _FULL, _FINETUNE = 1, 2, 3  # seed streams of the evaluation's training runs


def handle_evaluate(
    model: nn.Module,
    payload: bytes,
    instruction: TrainInstruction,
    data: ClientData,
    test: ClientData,
    device: torch.device,
    kit: PersonalKit,
    state: ClientState | None = None,
    export: Path | None = None,
) -> FitResult:
    """Scores this client's models on ``test``; ``export`` (if set) receives its personal
    model as a loadable adapter folder. The state changes only when fine-tuning made a
    personal model (``finetune``)."""
    served, _extras = split_extras(decode(payload)[0])
    plan = PersonalPlan.from_json(instruction.personal)
    kept, new_state = state or {}, None
    metrics: dict[str, float] = {"num_test": float(len(test.indices))}
    if len(test.indices):
        if not plan.parts:
            set_adapter_state(model, served)
            metrics |= _scored("global", model, test, instruction, device)
        mine = _personal_model(model, served, plan, kept, kit, data, instruction, device)
        if mine is not None:
            metrics |= _scored("personal", mine, test, instruction, device)
            trained = without_merged(get_adapter_state(mine))  # FLoRA's merged sums: served
            personal = personal_state(mine, trained, plan) if plan.keeps else trained
            metrics["personal_params"] = float(state_numel(personal))
            if plan.finetune_steps:  # the fine-tuned module is the client's own
                new_state = with_personal(kept, trained)
            if export is not None:
                _export(mine, kit, export, plan)
        metrics |= _baselines(model, served, plan, kept, kit, data, test, instruction, device)
    meta: dict[str, object] = {
        META_CLIENT_ID: instruction.client_id,
        META_ROUND: instruction.round,
        META_NONCE: instruction.nonce,
        META_NUM_EXAMPLES: len(test.indices),
        META_METRICS: metrics,
    }
    return FitResult(encode({}, meta), new_state)


def _personal_model(
    model: nn.Module,
    served: AdapterState,
    plan: PersonalPlan,
    kept: AdapterState,
    kit: PersonalKit,
    data: ClientData,
    ins: TrainInstruction,
    device: torch.device,
) -> nn.Module | None:
    """The client's own model, loaded (None: the plan defines none beyond the global)."""
    if plan.keeps:
        return personalised(model, served, plan, kept, kit, data, device)
    if plan.finetune_steps:
        set_adapter_state(model, served)
        _train(model, ins, data, device, _FINETUNE, steps=plan.finetune_steps)
        return model
    return None


def _baselines(
    model: nn.Module,
    served: AdapterState,
    plan: PersonalPlan,
    kept: AdapterState,
    kit: PersonalKit,
    data: ClientData,
    test: ClientData,
    ins: TrainInstruction,
    device: torch.device,
) -> dict[str, float]:
    """The local-only and fully personalised baselines, when the plan asks for them."""
    out: dict[str, float] = {}
    if plan.local_epochs:
        set_adapter_state(model, kit.initial())
        _train(model, ins, data, device, _LOCAL, epochs=plan.local_epochs)
        out |= _scored("local", model, test, ins, device)
    if plan.full_epochs:
        start = dict(served)
        if plan.parts:  # the global joined with this client's own part (or its start)
            start |= kept_personal(kept) or split_personal(kit.initial(), plan.parts)[1]
        set_adapter_state(model, start)
        _train(model, ins, data, device, _FULL, epochs=plan.full_epochs)
        out |= _scored("full", model, test, ins, device)
    return out


def _train(
    model: nn.Module,
    ins: TrainInstruction,
    data: ClientData,
    device: torch.device,
    stream: int,
    *,
    epochs: int = 1,
    steps: int | None = None,
) -> None:
    """Plain local training of every trainable tensor (no proximal term, nothing frozen),
    on its own seed stream."""
    seed = derive_seed(ins.seed, stream)
    train(
        model,
        replace(ins, epochs=epochs, steps=steps, proximal_mu=0.0, freeze=(), seed=seed),
        data,
        device,
    )


def _scored(
    name: str, model: nn.Module, test: ClientData, ins: TrainInstruction, device: torch.device
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on the held-out examples."""
    model.eval()
    correct, loss_sum = 0, 0.0
    indices = np.asarray(test.indices)
    with torch.inference_mode():
        for start in range(0, len(indices), ins.batch_size):
            batch = test.split.collate(indices[start : start + ins.batch_size]).to(device)
            if isinstance(batch, OwnLossBatch):  # spans, pairs: scored by the server
                raise FedpeftError("clients score classification data only, not QA or pairs.")
            out = model(**batch.model_inputs())
            logits = out.logits.float()
            correct += int((logits.argmax(-1) == batch.labels).sum())
            loss_sum += float(
                torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
            )
    n = max(len(indices), 1)
    return {f"{name}.accuracy": correct / n, f"{name}.loss": loss_sum / n}


def _export(model: nn.Module, kit: PersonalKit, folder: Path, plan: PersonalPlan) -> None:
    """The client's personal model as an adapter folder ``load_adapter`` (for PEFT methods
    ``PeftModel.from_pretrained``) loads — dual's two LoRAs composed into one
    (``merged_dual``) — swapped in whole."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if plan.rank:
        config, state = merged_dual(model)
        config.base_model_name_or_path = kit.base_id
        config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    else:
        save_adapter(model, get_adapter_state(model), tmp, kit.base_id, kit.method, kit.spec)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
