"""CLIP as a zero-shot-style classifier (Radford et al., 2021, "Learning Transferable Visual
Models From Natural Language Supervision").

Each class is the text prompt "a photo of a {label}."; an image's logits are the scaled
cosine similarities ``logits_c = exp(t) · ⟨f(x)/‖f(x)‖, g(p_c)/‖g(p_c)‖⟩`` between its
image embedding ``f(x)`` and the prompts' text embeddings ``g(p_c)``. There is no new head.
CoOp (Zhou et al., 2022, "Learning to Prompt for Vision-Language Models") replaces the
template's word embeddings by ``n`` learned context vectors shared by all classes;
initialised from the template's own embeddings when ``n`` equals its token count, an
untrained context leaves the logits unchanged.

For image–text matching, ``ClipMatcher`` is ``CLIPModel`` itself (same module names, so an
adapter trained on it loads onto a stock ``CLIPModel`` with plain PEFT) with a forward that
embeds whatever it is given and, given both towers' inputs, scores every image against
every text of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

TEMPLATE = "a photo of a"


def _pooled(out: Any) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


class ClipZeroShotClassifier(nn.Module):
    """``forward(pixel_values, labels)`` → logits over the class prompts (and the loss)."""

    base_model_prefix = "clip"  # transformers' weight-conversion lookup (used by PEFT) asks

    def __init__(
        self, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, label_names: list[str]
    ) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config
        self.config.num_labels = len(label_names)
        enc = tokenizer([f"{TEMPLATE} {name}." for name in label_names], padding=True)
        self.input_ids: torch.Tensor
        self.attention_mask: torch.Tensor
        self.register_buffer("input_ids", torch.tensor(enc["input_ids"]), persistent=False)
        self.register_buffer(
            "attention_mask", torch.tensor(enc["attention_mask"]), persistent=False
        )
        self.template_len = len(tokenizer(TEMPLATE, add_special_tokens=False)["input_ids"])
        self.config.prompt_length = int(self.input_ids.shape[1])
        self.context: nn.Parameter | None = None

    def add_context(self, n: int) -> None:
        """CoOp: ``n`` learned vectors take the template's place after the first token."""
        ids, mask, t = self.input_ids, self.attention_mask, self.template_len
        embed = self.clip.text_model.embeddings.token_embedding
        if n == t:
            init = embed.weight[ids[0, 1 : 1 + t]].detach().clone()
        else:
            init = 0.02 * torch.randn(n, embed.embedding_dim)  # CoOp's random initialisation
            filler = ids[:, 1:2].expand(-1, n)  # placeholder ids, replaced by the context
            ids = torch.cat([ids[:, :1], filler, ids[:, 1 + t :]], dim=1)
            mask = torch.cat([mask[:, :1], torch.ones_like(filler), mask[:, 1 + t :]], dim=1)
        self.input_ids, self.attention_mask = ids, mask
        self.context = nn.Parameter(init)
        embed.register_forward_hook(self._splice)

    def _splice(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        assert self.context is not None
        n = self.context.shape[0]
        ctx = self.context.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :1], ctx, out[:, 1 + n :]], dim=1)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> ImageClassifierOutput:
        image = _pooled(self.clip.get_image_features(pixel_values=pixel_values))
        text = _pooled(
            self.clip.get_text_features(
                input_ids=self.input_ids, attention_mask=self.attention_mask
            )
        )
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        logits = self.clip.logit_scale.exp() * image @ text.t()
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def matching_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss with every true pair a positive.

    ``L = ½ [ (1/I) Σ_i CE(s_i·, p_i) + (1/T) Σ_t CE(s_·t, q_t) ]``, where ``s`` is the
    (images × texts) logits, ``p_i = m_i· / Σ_t m_it`` spreads image i's target over its
    true texts and ``q_t = m_·t / Σ_i m_it`` text t's over its true images (``m = match``).
    With one text per image (``m = I``) this is Radford et al.'s loss exactly: the mean of
    the cross-entropies of ``logits_per_image`` and ``logits_per_text`` against the diagonal.
    """
    match = match.to(logits.dtype)
    i2t = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (i2t + t2i) / 2


@dataclass
class MatchOutput(ModelOutput):
    """``logits``: (images × texts) ``exp(t)·cos``; embeddings are L2-normalised."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


class ClipMatcher(CLIPModel):
    """``forward(pixel_values?, input_ids?, attention_mask?, match?)``: the normalised
    embeddings of what is given; with both, the logits ``exp(t)·⟨f(x_i), g(y_t)⟩`` of
    every image i against every text t; with ``match`` too, ``matching_loss``."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        match: torch.Tensor | None = None,
        **_: Any,
    ) -> MatchOutput:
        image = text = logits = loss = None
        if pixel_values is not None:
            image = _pooled(self.get_image_features(pixel_values=pixel_values))
            image = image / image.norm(dim=-1, keepdim=True)
        if input_ids is not None:
            text = _pooled(
                self.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            )
            text = text / text.norm(dim=-1, keepdim=True)
        scale = self.logit_scale.exp()
        if image is not None and text is not None:
            logits = scale * image @ text.t()
            if match is not None:
                loss = matching_loss(logits, match)
        return MatchOutput(loss, logits, image, text, scale)


def tiny_clip_config(vocab_size: int, bos: int, eos: int, pad: int) -> CLIPConfig:
    """2-block towers of width 32 (text) and 32 (vision, 32×32 images in 8×8 patches)."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
