"""The candidate PEFT configurations the server chooses from: method × size × placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidationInfo

from fedpeft.config.loading import describe_validation_error
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture, MethodSpec, get_method, method_names, parse_spec

Placement = Literal["all", "top"]


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


def known_method(method: str) -> str:
    if method not in method_names():
        raise PydanticCustomError(
            "method", "expected one of {names}", {"names": ", ".join(method_names())}
        )
    return method


class CandidateConfig(BaseModel):
    """A candidate as written in a config: ``{method = "lora", options = {r = 8}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str | None = Field(None, min_length=1, max_length=64)
    method: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        return known_method(method)

    @field_validator("options")
    @classmethod
    def _valid(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is None:  # the method itself was invalid: that error is reported
            return options
        spec = get_method(method).spec
        try:
            spec.model_validate(options)
        except ValidationError as e:
            err = e.errors()[0]
            detail = describe_validation_error(e).removesuffix(".")
            if err["type"] == "extra_forbidden":
                fields = ", ".join(spec.model_fields) or "none"
                detail = f"unknown option `{err['loc'][0]}` (its options: {fields})"
            raise PydanticCustomError(
                "options",
                "not valid for {method}: {detail}",
                {"method": repr(method), "detail": detail},
            ) from None
        return options

    def candidate(self) -> Candidate:
        return make_candidate(self.method, self.options, self.name)


class CatalogueConfig(BaseModel):
    """Which candidates to generate. ``top`` places an adapter in the upper half of the
    blocks only (cheaper backprop); ``all`` in every block."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    lora_ranks: list[PositiveInt] = [2, 4, 8, 16]
    lora_placements: list[Placement] = ["all", "top"]
    adapter_methods: list[Literal["houlsby", "pfeiffer"]] = ["houlsby", "pfeiffer"]
    adapter_sizes: list[PositiveInt] = [8, 32, 64]
    adapter_placements: list[Placement] = ["all"]
    prompt_tokens: list[PositiveInt] = [10, 20]
    prefix_tokens: list[PositiveInt] = []
    others: list[str] = Field(["ia3", "bitfit", "head"], description="methods, default options")
    extra: list[CandidateConfig] = []

    @field_validator("others")
    @classmethod
    def _methods(cls, others: list[str]) -> list[str]:
        return [known_method(m) for m in others]


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
    out = _generated(arch, cfg) + [c.candidate() for c in cfg.extra]
    if not out:
        raise FedpeftError("the candidate catalogue is empty; list at least one candidate.")
    seen: set[str] = set()
    for c in out:
        if c.name in seen:
            raise FedpeftError(f"two catalogue candidates are named {c.name!r}; rename one.")
        seen.add(c.name)
    return tuple(out)
