"""``Architecture`` of the image families, in closed form from their configs.

- EfficientNet-Lite: stem conv 3×3/2, then MBConv blocks (1×1 expansion when the ratio is
  not 1, k×k depthwise conv, 1×1 projection, each followed by BatchNorm), a 1×1 head conv
  with BatchNorm, global average pooling and fedpeft's ``classifier``. No convolution has
  a bias, so BitFit trains the BatchNorm biases. The block list is computed with the
  package's own rounding rules (``round_filters``, ``round_repeats``), without building the
  model. LoRA adapts the 1×1 convolutions (equivalent to linear maps at every position,
  ``Linear.positions`` of them); the stem and depthwise convolutions cannot carry it (PEFT
  needs the rank divisible by the groups, and these convolutions pad inside ``forward``).
- CenterNet on EfficientNet-Lite (fedpeft's, ``models/lite_detect.py``): the same trunk
  without the 1×1 head conv; its head (FPN laterals and three conv branches) is
  ``detection_head``, trained and sent whole.
- ViT (``transformers``): pre-norm encoder blocks with q/k/v/o projections and a 2-layer
  MLP, patch embedding conv, [CLS] token, position embeddings and a final LayerNorm; the
  head is ``classifier`` d→labels on [CLS].
- CLIP (``transformers``): a text and a vision tower of such blocks (``out_proj``), bias-free
  projections to the joint space and ``logit_scale``; no head. The text tower runs once per
  batch over the ``L`` class prompts, so its ``Linear.positions`` (L × prompt length) and the
  vision tower's (patches + [CLS]) give the FLOPs of a batch of one image. For image–text
  matching the model is ``CLIPModel`` itself (no prefix) and the text tower runs once per
  caption: its positions are the caption's ``seq_len``.
- ViLT (``transformers``): one post-embedding BERT-style encoder (query/key/value,
  attention output, intermediate and output dense layers, LayerNorm before and after)
  over text tokens and image patches + [CLS], a final LayerNorm and pooler, and
  ``ViltForQuestionAnswering``'s head ``classifier`` (d → 2d, LayerNorm, GELU, 2d → labels).
  Every projection runs at all ``seq_len`` positions (text tokens + image tokens).
- YOLOS (``transformers``): ViT blocks named like ViLT's over [CLS], the patches and the
  detection tokens (position embeddings interpolated to the input size; YOLOS-S adds a set
  per block), a final LayerNorm, and two 3-layer MLP heads on the detection tokens,
  ``class_labels_classifier`` (labels + "no object") and ``bbox_predictor`` (4).
"""

from __future__ import annotations

import math
from typing import Any

from fedpeft.peft.arch import Architecture, Linear, Roles

_CONV_SUFFIXES = ("_conv_stem", "_depthwise_conv")


def efficientnet_blocks(cfg: Any) -> list[tuple[int, int, int, int, int]]:
    """(in, expanded, out, kernel, stride) per MBConv block, as ``EfficientNet`` builds them."""
    from efficientnet_lite_pytorch.utils import get_model_params, round_filters, round_repeats

    blocks_args, gp = get_model_params(
        cfg.variant, {"width_coefficient": cfg.width, "depth_coefficient": cfg.depth}
    )
    out: list[tuple[int, int, int, int, int]] = []
    for i, args in enumerate(blocks_args):
        inp, final = round_filters(args.input_filters, gp), round_filters(args.output_filters, gp)
        first_or_last = i == 0 or i == len(blocks_args) - 1
        repeats = args.num_repeat if gp.fix_head_stem and first_or_last else None
        if repeats is None:
            repeats = round_repeats(args.num_repeat, gp)
        if gp.fix_head_stem and i == 0:
            inp = 32
        stride = args.stride if isinstance(args.stride, int) else args.stride[0]
        for r in range(repeats):
            block_in = inp if r == 0 else final
            out.append((block_in, block_in * args.expand_ratio, final, args.kernel_size,
                        stride if r == 0 else 1))  # fmt: skip
    return out


def _efficientnet_trunk(
    cfg: Any, image_size: int
) -> tuple[list[Linear], int, int, list[tuple[int, int, int, int, int]], list[int], int]:
    """(1×1 convs, weights, BatchNorm width, blocks, each block's output side, stem width)
    of the stem and MBConv blocks at a square input side."""
    from efficientnet_lite_pytorch.utils import get_model_params, round_filters

    _, gp = get_model_params(cfg.variant, {"width_coefficient": cfg.width})
    stem = round_filters(32, gp, gp.fix_head_stem)
    side = math.ceil(image_size / 2)  # after the stride-2 stem
    linears: list[Linear] = []
    weights, norms = 3 * stem * 9, stem  # stem conv, then one BatchNorm width per norm
    blocks = efficientnet_blocks(cfg)
    sides: list[int] = []
    for i, (inp, mid, final, k, s) in enumerate(blocks):
        p = f"backbone._blocks.{i}"
        if mid != inp:
            linears.append(Linear(f"{p}._expand_conv", inp, mid, i, side * side, conv=True))
            weights, norms = weights + inp * mid, norms + mid
        side = math.ceil(side / s)
        sides.append(side)
        linears.append(Linear(f"{p}._project_conv", mid, final, i, side * side, conv=True))
        weights += mid * k * k + mid * final  # depthwise, projection
        norms += mid + final
    return linears, weights, norms, blocks, sides, stem


def efficientnet(cfg: Any, num_labels: int) -> Architecture:
    from efficientnet_lite_pytorch.utils import get_model_params, round_filters

    _, gp = get_model_params(cfg.variant, {"width_coefficient": cfg.width})
    head = round_filters(1280, gp, gp.fix_head_stem)
    linears, weights, norms, blocks, sides, _ = _efficientnet_trunk(cfg, cfg.image_size)
    side = sides[-1]
    linears.append(Linear("backbone._conv_head", blocks[-1][2], head, None, side * side, conv=True))
    weights, norms = weights + blocks[-1][2] * head, norms + head
    head_params = head * num_labels + num_labels
    return Architecture(
        family="efficientnet",
        hidden=head,
        layers=len(blocks),
        heads=0,
        num_labels=num_labels,
        attn_dim=0,
        kv_dim=0,
        linears=tuple(linears),
        attn_out=(),
        ffn_out=(),
        head_prefix="classifier",
        head_params=head_params,
        bias_params=norms,  # BatchNorm biases; the convolutions have none
        total_params=weights + 2 * norms + head_params,
        head_token_flops=0,
        roles=Roles(pointwise=("_expand_conv", "_project_conv", "_conv_head")),
        peft_task=None,
        unadaptable=_CONV_SUFFIXES,
    )


def centernet(cfg: Any, num_labels: int, image_size: int | None = None) -> Architecture:
    """fedpeft's CenterNet on an EfficientNet-Lite trunk (``models/lite_detect.py``): the
    trunk without its 1×1 head conv, and ``detection_head`` — 1×1 laterals from the last
    block at strides 8, 16 and 32 to ``channels``, then three branches (3×3 conv, 1×1 conv
    to labels, 2, 2). ``image_size``: the input side the FLOPs are counted at."""
    side = image_size or cfg.image_size
    linears, weights, norms, blocks, sides, _ = _efficientnet_trunk(cfg, side)
    stride, last = 2, {}
    for i, (*_, s) in enumerate(blocks):
        stride *= s
        last[stride] = i
    ch = cfg.channels
    laterals = sum(blocks[last[s]][2] * ch + ch for s in (8, 16, 32))
    branch = ch * ch * 9 + ch
    head_params = laterals + 3 * branch + (ch * num_labels + num_labels) + 2 * (ch * 2 + 2)
    return Architecture(
        family="centernet",
        hidden=ch,
        layers=len(blocks),
        heads=0,
        num_labels=num_labels,
        attn_dim=0,
        kv_dim=0,
        linears=tuple(linears),
        attn_out=(),
        ffn_out=(),
        head_prefix="detection_head",
        head_params=head_params,
        bias_params=norms,  # the trunk's BatchNorm biases; its convolutions have none
        total_params=weights + 2 * norms + head_params,
        head_token_flops=0,
        roles=Roles(pointwise=("_expand_conv", "_project_conv")),
        peft_task=None,
        unadaptable=_CONV_SUFFIXES,
    )


def vit(cfg: Any, num_labels: int) -> Architecture:
    """``ViTForImageClassification`` (no pooler); sequence = patches + [CLS]."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    linears: list[Linear] = []
    for i in range(n_layers):
        a, m = f"vit.layers.{i}.attention", f"vit.layers.{i}.mlp"
        linears += [
            Linear(f"{a}.q_proj", d, d, i),
            Linear(f"{a}.k_proj", d, d, i),
            Linear(f"{a}.v_proj", d, d, i),
            Linear(f"{a}.o_proj", d, d, i),
            Linear(f"{m}.fc1", d, f, i),
            Linear(f"{m}.fc2", f, d, i),
        ]
    channels = getattr(cfg, "num_channels", 3)
    patch, tokens = cfg.patch_size, (cfg.image_size // cfg.patch_size) ** 2 + 1
    layer_norms = 2 * n_layers + 1
    patch_embed = channels * patch * patch * d
    biases = sum(lin.d_out for lin in linears) + layer_norms * d + d  # + the patch conv's
    weights = sum(lin.d_in * lin.d_out for lin in linears) + layer_norms * d + patch_embed
    embeddings = d + tokens * d  # [CLS] and position embeddings
    head = d * num_labels + num_labels
    return Architecture(
        family="vit",
        hidden=d,
        layers=n_layers,
        heads=cfg.num_attention_heads,
        num_labels=num_labels,
        attn_dim=d,
        kv_dim=d,
        linears=tuple(linears),
        attn_out=tuple(lin.name for lin in linears if lin.name.endswith(".o_proj")),
        ffn_out=tuple(lin.name for lin in linears if lin.name.endswith(".fc2")),
        head_prefix="classifier",
        head_params=head,
        bias_params=biases,
        total_params=embeddings + weights + biases + head,
        head_token_flops=0,
        roles=Roles(("q_proj",), ("k_proj",), ("v_proj",), feedforward=("fc2",)),
        peft_task=None,
        tokens=tokens,
    )


def _clip_tower(prefix: str, cfg: Any, layer0: int, positions: int | None) -> list[Linear]:
    d, f = cfg.hidden_size, cfg.intermediate_size
    out: list[Linear] = []
    for i in range(cfg.num_hidden_layers):
        a, m = f"{prefix}.encoder.layers.{i}.self_attn", f"{prefix}.encoder.layers.{i}.mlp"
        out += [
            Linear(f"{a}.k_proj", d, d, layer0 + i, positions),
            Linear(f"{a}.v_proj", d, d, layer0 + i, positions),
            Linear(f"{a}.q_proj", d, d, layer0 + i, positions),
            Linear(f"{a}.out_proj", d, d, layer0 + i, positions),
            Linear(f"{m}.fc1", d, f, layer0 + i, positions),
            Linear(f"{m}.fc2", f, d, layer0 + i, positions),
        ]
    return out


def clip(cfg: Any, num_labels: int, matching: bool = False) -> Architecture:
    """``CLIPModel`` inside fedpeft's zero-shot classifier (module prefix ``clip.``), or
    (``matching``) ``CLIPModel`` itself matching images and texts; blocks are numbered
    text first, then vision."""
    t, v = cfg.text_config, cfg.vision_config
    prompt = None if matching else getattr(cfg, "prompt_length", None)
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    root = "" if matching else "clip."
    text = _clip_tower(f"{root}text_model", t, 0, num_labels * prompt if prompt else None)
    vision = _clip_tower(f"{root}vision_model", v, t.num_hidden_layers, tokens)
    linears = text + vision
    norms = (2 * t.num_hidden_layers + 1) * t.hidden_size + (
        2 * v.num_hidden_layers + 2
    ) * v.hidden_size
    biases = sum(lin.d_out for lin in linears) + norms
    weights = sum(lin.d_in * lin.d_out for lin in linears) + norms
    embeddings = (t.vocab_size + t.max_position_embeddings) * t.hidden_size
    embeddings += v.hidden_size * (1 + tokens + 3 * v.patch_size**2)  # [CLS], positions, patches
    projections = (t.hidden_size + v.hidden_size) * cfg.projection_dim
    return Architecture(
        family="clip",
        hidden=t.hidden_size,  # the width of CoOp's context vectors
        layers=t.num_hidden_layers + v.num_hidden_layers,
        heads=t.num_attention_heads,
        num_labels=num_labels,
        attn_dim=t.hidden_size,
        kv_dim=t.hidden_size,
        linears=tuple(linears),
        attn_out=tuple(lin.name for lin in linears if lin.name.endswith(".out_proj")),
        ffn_out=tuple(lin.name for lin in linears if lin.name.endswith(".fc2")),
        head_prefix="",  # no head: the class prompts are the classifier
        head_params=0,
        bias_params=biases,
        total_params=embeddings + weights + biases + projections + 1,  # + logit_scale
        head_token_flops=0,
        roles=Roles(("q_proj",), ("k_proj",), ("v_proj",), feedforward=("fc2",)),
        peft_task=None,
        tokens=None if matching else tokens,
    )


def _vit_blocks(root: str, d: int, f: int, n_layers: int) -> list[Linear]:
    """The projections of ``n_layers`` ViT-style blocks under ``<root>.encoder.layer.<i>``
    (ViLT's and YOLOS' naming: ``attention.attention.query`` … ``output.dense``)."""
    linears: list[Linear] = []
    for i in range(n_layers):
        p = f"{root}.encoder.layer.{i}"
        linears += [
            Linear(f"{p}.attention.attention.query", d, d, i),
            Linear(f"{p}.attention.attention.key", d, d, i),
            Linear(f"{p}.attention.attention.value", d, d, i),
            Linear(f"{p}.attention.output.dense", d, d, i),
            Linear(f"{p}.intermediate.dense", d, f, i),
            Linear(f"{p}.output.dense", f, d, i),
        ]
    return linears


def _outputs(linears: list[Linear]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attention outputs, feed-forward outputs) of BERT-style names: ``output.dense`` is
    both, told apart by ``.attention.``."""
    attn = tuple(lin.name for lin in linears if lin.name.endswith("attention.output.dense"))
    ffn = tuple(
        lin.name
        for lin in linears
        if lin.name.endswith(".output.dense") and ".attention." not in lin.name
    )
    return attn, ffn


def vilt(cfg: Any, num_labels: int) -> Architecture:
    """``ViltForQuestionAnswering`` with an answer head of ``num_labels``."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    linears = _vit_blocks("vilt", d, f, n_layers)
    attn_out, ffn_out = _outputs(linears)
    linears.append(Linear("vilt.pooler.dense", d, d, None))
    layer_norms = 2 * n_layers + 2  # text embeddings, two per block, the final one
    patches = (cfg.image_size // cfg.patch_size) ** 2
    biases = sum(lin.d_out for lin in linears) + layer_norms * d + d  # + the patch conv's
    weights = sum(lin.d_in * lin.d_out for lin in linears) + layer_norms * d
    weights += cfg.num_channels * cfg.patch_size**2 * d  # patch projection
    text = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d
    image = d * (1 + patches + 1)  # [CLS] and its position, the patches' positions
    modality = cfg.modality_type_vocab_size * d
    wide = 2 * d
    head = d * wide + wide + 2 * wide + wide * num_labels + num_labels
    return Architecture(
        family="vilt",
        hidden=d,
        layers=n_layers,
        heads=cfg.num_attention_heads,
        num_labels=num_labels,
        attn_dim=d,
        kv_dim=d,
        linears=tuple(linears),
        attn_out=attn_out,
        ffn_out=ffn_out,
        head_prefix="classifier",
        head_params=head,
        bias_params=biases,
        total_params=text + image + modality + weights + biases + head,
        head_token_flops=0,  # the head sees the pooled first token only
        # PEFT's suffix "output.dense" also matches "attention.output.dense" (as in BERT)
        roles=Roles(("query",), ("key",), ("value",), feedforward=("output.dense",)),
        peft_task=None,
    )


def yolos(cfg: Any, num_labels: int, image_size: int | None = None) -> Architecture:
    """``YolosForObjectDetection``: ViT blocks over [CLS], the patches and ``T`` detection
    tokens, its two heads on the detection tokens. ``image_size``: the square input side
    the sequence length is counted at (None: the config's own ``image_size``)."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    linears = _vit_blocks("vit", d, f, n_layers)
    attn_out, ffn_out = _outputs(linears)
    patch, det, (h, w) = int(cfg.patch_size), cfg.num_detection_tokens, cfg.image_size
    patches = (h // patch) * (w // patch)
    layer_norms = 2 * n_layers + 1  # two per block, the final one
    qkv = 3 * d * n_layers if cfg.qkv_bias else 0
    biases = sum(lin.d_out for lin in linears) - (3 * d * n_layers - qkv) + layer_norms * d + d
    weights = sum(lin.d_in * lin.d_out for lin in linears) + layer_norms * d
    weights += cfg.num_channels * patch * patch * d  # patch projection
    embeddings = d + det * d + (1 + patches + det) * d  # [CLS], detection tokens, positions
    if cfg.use_mid_position_embeddings:  # one set per block but the last, at the config's size
        embeddings += (n_layers - 1) * (1 + h * w // patch**2 + det) * d
    mlp = 2 * (d * d + d)  # two hidden layers of each head
    heads = (mlp + d * (num_labels + 1) + num_labels + 1) + (mlp + 4 * d + 4)
    tokens = 1 + det + ((image_size // patch) ** 2 if image_size else patches)
    return Architecture(
        family="yolos",
        hidden=d,
        layers=n_layers,
        heads=cfg.num_attention_heads,
        num_labels=num_labels,
        attn_dim=d,
        kv_dim=d,
        linears=tuple(linears),
        attn_out=attn_out,
        ffn_out=ffn_out,
        head_prefix="class_labels_classifier",
        head_params=heads,
        bias_params=biases,
        total_params=embeddings + weights + biases + heads,
        head_token_flops=0,  # the heads see the detection tokens only
        roles=Roles(("query",), ("key",), ("value",), feedforward=("output.dense",)),
        peft_task=None,
        tokens=tokens,
        head_modules=("class_labels_classifier", "bbox_predictor"),
    )
