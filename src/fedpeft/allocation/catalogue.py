"""The candidate PEFT configurations the server chooses from: method × size × placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedpeft.config import CandidateConfig, CatalogueConfig
from fedpeft.config.allocation import Placement
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


def _generated(arch: Architecture, cfg: CatalogueConfig) -> list[Candidate]:
    out: list[Candidate] = []
    top = placement_layers("top", arch.layers)
    for r in cfg.lora_ranks:
        for place in cfg.lora_placements:
            opts: dict[str, Any] = {"r": r, "alpha": 2.0 * r}  # α/r = 2 at every rank
            opts |= {"layers": top} if place == "top" else {}
            out.append(make_candidate("lora", opts, f"lora-r{r}-{place}"))
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
