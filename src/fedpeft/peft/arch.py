"""A model's shape from its config alone, so PEFT costs can be predicted without building it.

``Architecture`` lists every linear projection (name, in, out, layer) and the parameter
counts that the methods' formulas need, derived in closed form from a ``transformers``
config. The predictions are checked against real models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fedpeft.errors import FedpeftError


@dataclass(frozen=True)
class Linear:
    name: str  # module path inside the model, e.g. "bert.encoder.layer.0.attention.self.query"
    d_in: int
    d_out: int
    layer: int | None  # transformer block index, None outside the blocks
    positions: int | None = None  # fixed positions per example (a CNN's H×W); None: seq_len


@dataclass(frozen=True)
class Architecture:
    family: str
    hidden: int
    layers: int
    heads: int
    num_labels: int
    attn_dim: int  # query heads × head size: the width of QKᵀ and AV (``hidden`` in BERT)
    kv_dim: int  # key/value heads × head size (smaller than ``attn_dim`` with GQA)
    linears: tuple[Linear, ...]
    attn_out: tuple[str, ...]  # projections closing attention (Houlsby's first adapter site)
    ffn_out: tuple[str, ...]  # projections closing the feed-forward block
    head_prefix: str  # parameters under this prefix form the task head
    head_params: int  # trainable head parameters (0: the head stays frozen)
    bias_params: int  # every bias of the base model outside the head (BitFit)
    total_params: int  # base + head
    head_token_flops: int  # head FLOPs per position where the head runs on every token
    lora_targets: tuple[str, ...]  # PEFT's default LoRA targets for the family
    ia3_targets: tuple[str, ...]  # PEFT's default IA3 targets …
    ia3_feedforward: tuple[str, ...]  # … and which of them scale their input
    peft_task: str | None = "SEQ_CLS"  # PEFT's task type; None: head in ``modules_to_save``
    unadaptable: tuple[str, ...] = ()  # module suffixes that LoRA must not target
    tokens: int | None = None  # a fixed sequence length (ViT: patches + [CLS]), else None

    def per_token_flops(self) -> int:
        """Forward FLOPs per token of the blocks' projections (2 per multiply-add)."""
        return sum(2 * lin.d_in * lin.d_out for lin in self.linears if lin.layer is not None)

    def attention_flops(self, seq_len: int, extra_keys: int = 0) -> int:
        """Forward FLOPs of QKᵀ and AV for one example, with ``extra_keys`` prefix keys.

        With grouped-query attention every query head still meets every key, so the cost
        scales with the query width ``attn_dim``, not with the key/value width.
        """
        return self.layers * 2 * 2 * seq_len * (seq_len + extra_keys) * self.attn_dim


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
        attn_dim=d,
        kv_dim=d,
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
        head_token_flops=0,  # the head sees the pooled [CLS] token only
        lora_targets=("query", "value"),
        # suffix "output.dense" also matches "attention.output.dense"
        ia3_targets=("key", "value", "output.dense"),
        ia3_feedforward=("output.dense",),
    )


def _llama(cfg: Any, num_labels: int) -> Architecture:
    """LLaMA-style decoders (pre-norm RMSNorm, grouped-query attention, SwiGLU MLP) with
    ``LlamaForSequenceClassification``'s head: ``score``, d→labels without bias, applied to
    every position before the last non-pad one is pooled. Tied embeddings do not apply."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, kv_heads * head_dim
    attn_bias = bool(getattr(cfg, "attention_bias", False))
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    linears: list[Linear] = []
    biased: set[str] = set()
    for i in range(n_layers):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        attn = [
            Linear(f"{a}.q_proj", d, q, i),
            Linear(f"{a}.k_proj", d, kv, i),
            Linear(f"{a}.v_proj", d, kv, i),
            Linear(f"{a}.o_proj", q, d, i),
        ]
        mlp = [
            Linear(f"{m}.gate_proj", d, f, i),
            Linear(f"{m}.up_proj", d, f, i),
            Linear(f"{m}.down_proj", f, d, i),
        ]
        linears += attn + mlp
        biased |= {lin.name for lin in attn if attn_bias} | {lin.name for lin in mlp if mlp_bias}
    norms = 2 * n_layers + 1  # input and post-attention RMSNorm per block, then the final one
    biases = sum(lin.d_out for lin in linears if lin.name in biased)
    weights = sum(lin.d_in * lin.d_out for lin in linears) + norms * d
    head = d * num_labels
    return Architecture(
        family="llama",
        hidden=d,
        layers=n_layers,
        heads=cfg.num_attention_heads,
        num_labels=num_labels,
        attn_dim=q,
        kv_dim=kv,
        linears=tuple(linears),
        attn_out=tuple(lin.name for lin in linears if lin.name.endswith(".o_proj")),
        ffn_out=tuple(lin.name for lin in linears if lin.name.endswith(".down_proj")),
        head_prefix="score",
        head_params=head,
        bias_params=biases,
        total_params=cfg.vocab_size * d + weights + biases + head,
        head_token_flops=2 * d * num_labels,
        lora_targets=("q_proj", "v_proj"),
        ia3_targets=("k_proj", "v_proj", "down_proj"),
        ia3_feedforward=("down_proj",),
    )


def _llama_causal_lm(cfg: Any) -> Architecture:
    """``LlamaForCausalLM``: the same blocks with the language-model head ``lm_head``
    (d→vocab, no bias) on every position. The head stays frozen — with tied embeddings
    (SmolLM2) it *is* the embedding matrix — so no head parameter trains or travels."""
    arch = _llama(cfg, num_labels=0)
    d, vocab = cfg.hidden_size, cfg.vocab_size
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    return replace(
        arch,
        head_prefix="lm_head",
        head_params=0,
        total_params=arch.total_params + (0 if tied else vocab * d),
        head_token_flops=2 * d * vocab,
        peft_task="CAUSAL_LM",
    )


def model_architecture(model: Any) -> Architecture:
    """The ``Architecture`` of a built ``transformers`` model with its task head (a
    language-model head, ``lm_head``, makes it a causal LM)."""
    config = getattr(model, "config", None)
    if config is None:
        raise FedpeftError(
            f"{type(model).__name__} has no `config`; expected a transformers model."
        )
    if hasattr(model, "lm_head"):
        return architecture(config, 0, causal_lm=True)
    return architecture(config, int(config.num_labels))


def architecture(config: Any, num_labels: int, causal_lm: bool = False) -> Architecture:
    """The ``Architecture`` of a ``transformers`` config (``model_type`` picks the family);
    ``causal_lm`` for the language-model head instead of a classifier of ``num_labels``."""
    from fedpeft.peft import arch_vision

    model_type = getattr(config, "model_type", None)
    if causal_lm:
        if model_type == "llama":
            return _llama_causal_lm(config)
        raise FedpeftError(
            f"model type {model_type!r} has no causal-LM cost model; supported: llama."
        )
    if model_type == "efficientnet_lite":
        return arch_vision.efficientnet(config, num_labels)
    if model_type == "vit":
        return arch_vision.vit(config, num_labels)
    if model_type == "clip":
        return arch_vision.clip(config, num_labels)
    if model_type == "bert":
        return _encoder(config, "bert", num_labels)
    if model_type in ("roberta", "xlm-roberta"):
        return _encoder(config, "roberta", num_labels)
    if model_type == "llama":
        return _llama(config, num_labels)
    raise FedpeftError(
        f"model type {model_type!r} has no cost model yet; supported: bert, roberta, llama, "
        "efficientnet_lite, vit, clip."
    )
