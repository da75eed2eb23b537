"""Saving and loading a trained adapter folder.

Methods built on ``peft`` save a standard PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` loads. fedpeft's own
methods (bottleneck adapters, BitFit, head, full) save ``adapter_model.safetensors`` with
``fedpeft_adapter.json`` naming the method and its options; ``load_adapter`` loads both.
A classifier's folder also holds the base model's ``config.json`` with its number of labels
and ``id2label``/``label2id``, so ``AutoConfig.from_pretrained(folder)`` rebuilds the head
with the label names (see the README). A FLoRA folder (``peft/flora.py``) is a PEFT folder
plus ``merged_weights.safetensors``, the merged sums ``ΔW`` of each adapted layer
(applied as ``W₀ + (α/r)·ΔW``), which ``load_adapter`` adds; ``PeftModel.from_pretrained``
alone would load only the last round's LoRA.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from fedpeft.peft.families import model_architecture
from fedpeft.peft.flora import attach_merged
from fedpeft.peft.registry import get_method, parse_spec
from fedpeft.peft.spec import MethodSpec
from fedpeft.peft.state import get_adapter_state, merged_buffers, set_adapter_state
from fedpeft.types import AdapterState

FEDPEFT_CONFIG = "fedpeft_adapter.json"
WEIGHTS = "adapter_model.safetensors"
MERGED_WEIGHTS = "merged_weights.safetensors"  # FLoRA's merged sums beside a PEFT folder


def save_adapter(
    model: nn.Module,
    state: AdapterState,
    folder: Path,
    base_id: str,
    method: str,
    spec: MethodSpec,
) -> None:
    set_adapter_state(model, state)
    if isinstance(model, PeftModel):
        for cfg in model.peft_config.values():  # name the base by its hub id, not a local path
            cfg.base_model_name_or_path = base_id
        model.save_pretrained(str(folder), save_embedding_layers=False)
        _save_head_config(model.get_base_model(), folder, base_id)
        merged = {k: v.contiguous() for k, v in merged_buffers(model).items()}
        if merged:
            save_file(merged, str(folder / MERGED_WEIGHTS))
        return
    folder.mkdir(parents=True, exist_ok=True)
    _save_head_config(model, folder, base_id)
    tensors = {k: v.contiguous() for k, v in get_adapter_state(model).items()}
    save_file(tensors, str(folder / WEIGHTS))
    meta = {"method": method, "options": spec.model_dump(mode="json"), "base_model": base_id}
    (folder / FEDPEFT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def _save_head_config(base: nn.Module, folder: Path, base_id: str) -> None:
    """``config.json`` of a classifier (its labels: ``num_labels``, ``id2label``,
    ``label2id``; ViLT's VQA head: its answers; a detector: its classes), naming the base
    by its hub id; other
    models save none."""
    config = getattr(base, "config", None)  # transformers' classifiers all hold one
    name = type(base).__name__
    answers = name == "ViltForQuestionAnswering"  # a classifier over the answer vocabulary
    heads = ("ForSequenceClassification", "ForImageClassification", "ForObjectDetection")
    if config is None or not (answers or name.endswith(heads)):
        return
    config = copy.deepcopy(config)
    config._name_or_path = base_id
    config.save_pretrained(str(folder))


def load_adapter(base: nn.Module, folder: Path) -> nn.Module:
    """``base`` (a freshly loaded model with its task head) with the saved adapter applied."""
    if not (folder / FEDPEFT_CONFIG).is_file():
        peft_model = PeftModel.from_pretrained(base, str(folder))
        if (folder / MERGED_WEIGHTS).is_file():  # FLoRA: the merged sums under the LoRA
            attach_merged(peft_model)
            set_adapter_state(peft_model, load_file(str(folder / MERGED_WEIGHTS)))
        return peft_model
    meta = json.loads((folder / FEDPEFT_CONFIG).read_text())
    get_method(meta["method"])
    spec = parse_spec(meta["method"], meta["options"])
    model = spec.apply(base, model_architecture(base))
    set_adapter_state(model, load_file(str(folder / WEIGHTS)))
    return model
