"""A model's shape from its config alone, so PEFT costs can be predicted without building it.

``Architecture`` lists every linear projection (name, in, out, layer) and the parameter
counts that the methods' formulas need, derived in closed form from a ``transformers``
config. The predictions are checked against real models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedpeft.errors import FedpeftError


@dataclass(frozen=True)
class Linear:
    name: str  # module path inside the model, e.g. "bert.encoder.layer.0.attention.self.query"
    d_in: int
    d_out: int
    layer: int | None  # transformer block index, None outside the blocks


@dataclass(frozen=True)
class Architecture:
    family: str
    hidden: int
    layers: int
    heads: int
    num_labels: int
    linears: tuple[Linear, ...]
    attn_out: tuple[str, ...]  # projections closing attention (Houlsby's first adapter site)
    ffn_out: tuple[str, ...]  # projections closing the feed-forward block
    head_prefix: str  # parameters under this prefix form the task head
    head_params: int
    bias_params: int  # every bias of the base model outside the head (BitFit)
    total_params: int  # base + head

    def per_token_flops(self) -> int:
        """Forward FLOPs per token of the blocks' projections (2 per multiply-add)."""
        return sum(2 * lin.d_in * lin.d_out for lin in self.linears if lin.layer is not None)

    def attention_flops(self, seq_len: int, extra_keys: int = 0) -> int:
        """Forward FLOPs of QKᵀ and AV for one example, with ``extra_keys`` prefix keys."""
        return self.layers * 2 * 2 * seq_len * (seq_len + extra_keys) * self.hidden


def _encoder(cfg: Any, family: str, num_labels: int) -> Architecture:
    """BERT-style encoders (BERT, MiniLM, RoBERTa) with a sequence-classification head."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    root = "bert" if family == "bert" else "roberta"
    linears: list[Linear] = []
    for i in range(n_layers):
        p = f"{root}.encoder.layer.{i}"
        linears += [
            Linear(f"{p}.attention.self.query", d, d, i),
            Linear(f"{p}.attention.self.key", d, d, i),
            Linear(f"{p}.attention.self.value", d, d, i),
            Linear(f"{p}.attention.output.dense", d, d, i),
            Linear(f"{p}.intermediate.dense", d, f, i),
            Linear(f"{p}.output.dense", f, d, i),
        ]
    pooler = family == "bert"  # RoBERTa's classifier has its own dense layer, no pooler
    if pooler:
        linears.append(Linear(f"{root}.pooler.dense", d, d, None))
    if family == "bert":
        head = d * num_labels + num_labels
    else:  # RobertaClassificationHead: dense d→d, then out_proj d→labels
        head = d * d + d + d * num_labels + num_labels
    layer_norms = 1 + 2 * n_layers  # embeddings, then attention and output per block
    biases = sum(lin.d_out for lin in linears) + layer_norms * d
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d
    weights = sum(lin.d_in * lin.d_out for lin in linears) + layer_norms * d  # LN weights
    return Architecture(
        family=family,
        hidden=d,
        layers=n_layers,
        heads=cfg.num_attention_heads,
        num_labels=num_labels,
        linears=tuple(linears),
        attn_out=tuple(lin.name for lin in linears if lin.name.endswith("attention.output.dense")),
        ffn_out=tuple(
            lin.name
            for lin in linears
            if lin.name.endswith(".output.dense") and ".attention." not in lin.name
        ),
        head_prefix="classifier",
        head_params=head,
        bias_params=biases,
        total_params=embeddings + weights + biases + head,
    )


def model_architecture(model: Any) -> Architecture:
    """The ``Architecture`` of a built ``transformers`` model with its task head."""
    config = getattr(model, "config", None)
    if config is None:
        raise FedpeftError(
            f"{type(model).__name__} has no `config`; expected a transformers model."
        )
    return architecture(config, int(config.num_labels))


def architecture(config: Any, num_labels: int) -> Architecture:
    """The ``Architecture`` of a ``transformers`` config (``model_type`` picks the family)."""
    model_type = getattr(config, "model_type", None)
    if model_type == "bert":
        return _encoder(config, "bert", num_labels)
    if model_type in ("roberta", "xlm-roberta"):
        return _encoder(config, "roberta", num_labels)
    raise FedpeftError(
        f"model type {model_type!r} has no cost model yet; supported: bert, roberta."
    )
