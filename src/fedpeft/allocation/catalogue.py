"""The candidate PEFT configurations the server chooses from.

By default a LoRA grid — rank × depth (the top blocks) × target projections — so every
client's update lands in one envelope; other methods join only when listed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedpeft.config import CandidateConfig, CatalogueConfig
from fedpeft.config.allocation import Placement, TargetSet
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture, MethodSpec, parse_spec


@dataclass(frozen=True)
class Candidate:
    """One configuration: a method, its options (validated into ``spec``) and a name."""

    name: str
    method: str
    options: Mapping[str, Any]
    spec: MethodSpec

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "method": self.method, "options": dict(self.options)}


def default_name(method: str, options: Mapping[str, Any]) -> str:
    """``lora(r=8, layers=[3, 4, 5])``; a method with no options is just its name."""
    if not options:
        return method
    return f"{method}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"


def make_candidate(
    method: str, options: Mapping[str, Any] | None = None, name: str | None = None
) -> Candidate:
    """A candidate whose options the method's spec has validated (``parse_spec``)."""
    opts = dict(options or {})
    spec = parse_spec(method, opts)
    return Candidate(name or default_name(method, opts), method, opts, spec)


def candidate_of(config: CandidateConfig) -> Candidate:
    """The candidate a config describes (its options validated by the method's spec)."""
    return make_candidate(config.method, config.options, config.name)


def placement_layers(placement: Placement, num_layers: int) -> list[int] | None:
    """``None`` (every block) for ``all``; blocks ``⌊L/2⌋ … L−1`` for ``top``."""
    return None if placement == "all" else list(range(num_layers // 2, num_layers))


def top_blocks(depth: float, num_layers: int) -> list[int]:
    """The top ``k = round(d·L)`` blocks (at least one): ``L−k … L−1``."""
    k = max(1, min(num_layers, math.floor(depth * num_layers + 0.5)))
    return list(range(num_layers - k, num_layers))


def target_modules(arch: Architecture, targets: TargetSet) -> list[str] | None:
    """The projections a target set names; ``None`` for ``qv`` (LoRA's default targets:
    query and value, or a CNN's 1×1 convolutions). ``None`` too when the family has no
    key role (a CNN), where only the default set is generated."""
    roles = arch.roles
    if targets == "qv" or not roles.key:
        return None
    names = roles.query + roles.key + roles.value
    return list(names + roles.feedforward if targets == "qkv_ffn" else names)


def lora_name(r: int, layers: list[int], num_layers: int, targets: TargetSet) -> str:
    """``lora-r8-all``, ``lora-r8-top2``, ``lora-r8-top2-qkv``."""
    depth = "all" if len(layers) == num_layers else f"top{len(layers)}"
    return f"lora-r{r}-{depth}" + ("" if targets == "qv" else f"-{targets}")


def _lora_grid(arch: Architecture, cfg: CatalogueConfig) -> list[Candidate]:
    """Rank × depth × targets; depths that round to the same blocks are generated once,
    as are target sets the family cannot name (a CNN has no key projection)."""
    out: dict[str, Candidate] = {}
    for targets in cfg.lora_targets:
        modules = target_modules(arch, targets)
        if modules is None and targets != "qv" and "qv" in cfg.lora_targets:
            continue
        for r in cfg.lora_ranks:
            for depth in cfg.lora_depths:
                layers = top_blocks(depth, arch.layers)
                name = lora_name(r, layers, arch.layers, targets)
                opts: dict[str, Any] = {"r": r, "alpha": 2.0 * r}  # α/r = 2 at every rank
                opts |= {"layers": layers} if len(layers) < arch.layers else {}
                opts |= {"target_modules": modules} if modules else {}
                out.setdefault(name, make_candidate("lora", opts, name))
    return list(out.values())


def _generated(arch: Architecture, cfg: CatalogueConfig) -> list[Candidate]:
    out = _lora_grid(arch, cfg)
    top = placement_layers("top", arch.layers)
    for method in cfg.adapter_methods:
        for size in cfg.adapter_sizes:
            for place in cfg.adapter_placements:
                opts = {"size": size} | ({"layers": top} if place == "top" else {})
                out.append(make_candidate(method, opts, f"{method}-s{size}-{place}"))
    for soft, counts in (("prompt", cfg.prompt_tokens), ("prefix", cfg.prefix_tokens)):
        out += [make_candidate(soft, {"num_virtual_tokens": n}, f"{soft}-t{n}") for n in counts]
    return out + [make_candidate(m, {}, m) for m in cfg.others]


def build_catalogue(
    arch: Architecture, cfg: CatalogueConfig | None = None
) -> tuple[Candidate, ...]:
    """The catalogue in a fixed order (generated, then ``extra``); names are unique."""
    cfg = cfg or CatalogueConfig()
    out = _generated(arch, cfg) + [candidate_of(c) for c in cfg.extra]
    if not out:
        raise FedpeftError("the candidate catalogue is empty; list at least one candidate.")
    seen: set[str] = set()
    for c in out:
        if c.name in seen:
            raise FedpeftError(f"two catalogue candidates are named {c.name!r}; rename one.")
        seen.add(c.name)
    return tuple(out)
