"""``Architecture`` of the text families, in closed form from their ``transformers`` configs.

- BERT-style encoders (BERT, MiniLM, RoBERTa) with a sequence-classification head.
- LLaMA-style decoders with ``LlamaForSequenceClassification``'s head, or as a causal LM.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedpeft.peft.arch import Architecture, Linear, Roles


def encoder(cfg: Any, family: str, num_labels: int) -> Architecture:
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
        # PEFT's suffix "output.dense" also matches "attention.output.dense"
        roles=Roles(("query",), ("key",), ("value",), feedforward=("output.dense",)),
    )


def llama(cfg: Any, num_labels: int) -> Architecture:
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
        roles=Roles(("q_proj",), ("k_proj",), ("v_proj",), feedforward=("down_proj",)),
    )


def llama_causal_lm(cfg: Any) -> Architecture:
    """``LlamaForCausalLM``: the same blocks with the language-model head ``lm_head``
    (d→vocab, no bias) on every position. The head stays frozen — with tied embeddings
    (SmolLM2) it *is* the embedding matrix — so no head parameter trains or travels."""
    arch = llama(cfg, num_labels=0)
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
