"""Several PEFT methods on ONE frozen base: each method gets its own module tree whose
frozen tensors are the base's own (not copies), so a federation whose clients train
different methods holds the base weights once.

``copy.deepcopy`` with a memo that maps every base parameter and buffer to itself copies
the module structure only. After the method is applied, every tensor the method trains
that is still the base's (a bias for BitFit, the head for ``head``, everything for
``full``) is replaced by a private copy, and the base's tensor is frozen again, so no two
methods ever train the same tensor. No library offers this: PEFT's multi-adapter support
is limited to adapters of one type inside one ``PeftModel``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedpeft.peft.arch import Architecture
from fedpeft.peft.spec import MethodSpec


def apply_shared(base: nn.Module, spec: MethodSpec, arch: Architecture, seed: int) -> nn.Module:
    """``spec`` applied to a structural copy of ``base`` that shares its frozen tensors.

    ``base`` itself is left as it was, every parameter frozen. Initialisation of the new
    parameters is seeded, so every process builds the same model.
    """
    base.requires_grad_(False)
    shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
    clone = copy.deepcopy(base, memo=dict(shared))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.apply(clone, arch)
    _privatise_trained(model, shared)
    base.requires_grad_(False)
    for p in model.parameters():  # trained in float32 whatever the base stores (precision.py)
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    return model


def _privatise_trained(model: nn.Module, shared: dict[int, torch.Tensor]) -> None:
    """Every trainable parameter of ``model`` that is a base tensor becomes a private copy."""
    copies: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not p.requires_grad or id(p) not in shared:
                continue
            if id(p) not in copies:  # tied weights stay tied
                copies[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=True)
            module._parameters[name] = copies[id(p)]
