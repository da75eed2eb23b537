"""A model's shape from its config alone, so PEFT costs can be predicted without building it.

``Architecture`` lists every linear projection (name, in, out, layer) and the parameter
counts that the methods' formulas need, derived in closed form from a ``transformers``
config (``arch_text``, ``arch_vision``; ``families.architecture`` picks the builder). The
predictions are checked against real models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Linear:
    name: str  # module path inside the model, e.g. "bert.encoder.layer.0.attention.self.query"
    d_in: int
    d_out: int
    layer: int | None  # transformer block index, None outside the blocks
    positions: int | None = None  # fixed positions per example (a CNN's H×W); None: seq_len
    conv: bool = False  # a 1×1 convolution (the same linear map at every position)


@dataclass(frozen=True)
class Roles:
    """Which projections play each structural role, as module-name suffixes the way PEFT
    matches ``target_modules`` (a name or one of its dotted suffixes). Methods choose their
    default targets from roles, so a family states its structure once for all of them."""

    query: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    value: tuple[str, ...] = ()
    feedforward: tuple[str, ...] = ()  # the feed-forward block's output projection
    pointwise: tuple[str, ...] = ()  # a CNN's 1×1 convolutions


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
    roles: Roles  # which projections are queries, keys, values, feed-forward outputs, …
    peft_task: str | None = "SEQ_CLS"  # PEFT's task type; None: head in ``modules_to_save``
    unadaptable: tuple[str, ...] = ()  # module suffixes that LoRA must not target
    tokens: int | None = None  # a fixed sequence length (ViT: patches + [CLS]), else None
    # the head's modules when it has more than one (YOLOS: class and box MLPs); the first
    # is ``head_prefix``. Empty: ``head_prefix`` alone
    head_modules: tuple[str, ...] = ()

    @property
    def head_names(self) -> tuple[str, ...]:
        """The module names (prefixes) whose parameters form the task head."""
        return self.head_modules or (self.head_prefix,)

    def per_token_flops(self) -> int:
        """Forward FLOPs per token of the blocks' projections (2 per multiply-add)."""
        return sum(2 * lin.d_in * lin.d_out for lin in self.linears if lin.layer is not None)

    def attention_flops(self, seq_len: int, extra_keys: int = 0) -> int:
        """Forward FLOPs of QKᵀ and AV for one example, with ``extra_keys`` prefix keys.

        With grouped-query attention every query head still meets every key, so the cost
        scales with the query width ``attn_dim``, not with the key/value width.
        """
        return self.layers * 2 * 2 * seq_len * (seq_len + extra_keys) * self.attn_dim
