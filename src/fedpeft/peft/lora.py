"""LoRA through Hugging Face ``peft``: ``h = W₀x + (α/r)·B A x`` (Hu et al., 2021).

The classification head is trained as well (``modules_to_save``), as PEFT does for
``SEQ_CLS`` tasks, and travels with the adapter.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from fedpeft.config import PeftConfig
from fedpeft.errors import FedpeftError
from fedpeft.peft.registry import PeftMethod, register_method


def apply_lora(model: PreTrainedModel, cfg: PeftConfig) -> PeftModel:
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,  # None: PEFT's default for the model type
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise FedpeftError(f"`peft.target_modules` does not fit this model: {e}") from None


register_method(PeftMethod("lora", apply_lora, "low-rank adapters on attention projections"))
