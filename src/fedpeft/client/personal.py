"""The client half of personalisation: which part of the PEFT module a client keeps, how
it joins the global each round, and the models that need to be built for it once.

The server says what stays local in the instruction (``TrainInstruction.personal``, a
``PersonalPlan`` as canonical JSON):

- ``parts``: adapter key parts that never leave the client — ``head`` keeps the task head
  (FedPer; Arivazhagan et al., 2019), ``lora_b`` every LoRA ``B`` (FedSA-LoRA; Guo et al.,
  2025: A learns what clients share, B what is theirs). The server neither sends nor
  expects these keys; the client keeps them in its state as ``personal/<key>``.
- ``rank``: a personal LoRA of this rank on the global LoRA's modules (FedDPA; Yang et al.,
  2024): ``h = W₀x + s_g·B_g A_g x + s_p·B_p A_p x``; only the global pair travels.

Both halves train together in every local step, from one loss (FedSim in Pillutla et al.,
2022, "Federated learning with partial model personalization"). A client that has kept
nothing yet starts its personal part from the method's fresh, seeded initialisation — the
same in every process — except a personal head under ``head_start = "lda"`` (the default):
it starts as the shrunk linear discriminant of the client's own training examples' features
under the served adapter (``aggregation.head_init.lda_head``, the rule the server applies at
round 0 to every client's statistics, here to this client's alone), so FedPer's head does
not spend the run's first rounds learning from random weights. Classes the client holds no
example of get a zero weight row and a bias ``UNHELD_MARGIN`` below its least likely class:
its personal model predicts them only where its own data gives it a reason to.
``finetune_steps`` and the baselines' epochs are read at evaluation
(``client/evaluate.py``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, fields

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from fedpeft.aggregation.head_init import STATS_COUNT, head_keys, lda_head, ncm_head
from fedpeft.client.features import class_feature_stats, num_classes
from fedpeft.client.train import ClientData
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture, MethodSpec, get_adapter_state, set_adapter_state
from fedpeft.peft.share import apply_shared
from fedpeft.types import AdapterState

PERSONAL = "personal/"  # prefix of the personal tensors in a client's kept state
ADAPTER = "personal"  # peft's name of dual's personal LoRA ("default" is the global one)
_DUAL_SEED = 0xD0A1  # the personal LoRA's initialisation stream, beside the run's seed
HEAD_STARTS = ("", "random", "lda")  # "" (an older plan): random
UNHELD_MARGIN = 10.0  # logits below the least likely held class (a prior of ~e⁻¹⁰)
_STATS_BATCH = 32


@dataclass(frozen=True)
class PersonalPlan:
    """What a client keeps and how it is scored (all zero/empty: nothing personal)."""

    mode: str = "none"
    parts: tuple[str, ...] = ()  # adapter key parts that stay on the client
    rank: int = 0  # dual: the personal LoRA's rank (0: none)
    finetune_steps: int = 0  # finetune: local steps from the global before scoring
    local_epochs: int = 0  # evaluation: train and score the local-only baseline
    full_epochs: int = 0  # evaluation: train and score the fully personalised baseline
    head_start: str = ""  # head: where a client's first personal head starts ("lda")

    @property
    def keeps(self) -> bool:
        """Whether training keeps a personal part between rounds."""
        return bool(self.parts or self.rank)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PersonalPlan:
        """The plan an instruction carries ("" is none); anything malformed is refused."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            names = {f.name for f in fields(cls)}
            if not isinstance(raw, dict) or not set(raw) <= names:
                raise ValueError("unknown fields")
            plan = cls(**{**raw, "parts": tuple(raw.get("parts", ()))})
        except (ValueError, TypeError, RecursionError) as e:
            raise FedpeftError(
                f"the instruction's personalisation plan is malformed ({e})."
            ) from None
        if plan.head_start not in HEAD_STARTS:
            raise FedpeftError("the instruction's personalisation plan names no valid head start.")
        ints = (plan.rank, plan.finetune_steps, plan.local_epochs, plan.full_epochs)
        if not isinstance(plan.mode, str) or not all(isinstance(p, str) for p in plan.parts):
            raise FedpeftError("the instruction's personalisation plan names no valid parts.")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1e6 for i in ints):
            raise FedpeftError("the instruction's personalisation plan has invalid counts.")
        return plan


def is_personal(key: str, parts: tuple[str, ...]) -> bool:
    """Whether adapter key ``key`` stays local: a part is matched against ``"." + key``, so
    ``".classifier."`` names a top-level head and a nested one alike."""
    return any(part in "." + key for part in parts)


def split_personal(
    state: AdapterState, parts: tuple[str, ...]
) -> tuple[AdapterState, AdapterState]:
    """(the shared tensors, the personal ones) of ``state``."""
    shared = {k: v for k, v in state.items() if not is_personal(k, parts)}
    return shared, {k: v for k, v in state.items() if is_personal(k, parts)}


def shared_view(state: AdapterState, plan: PersonalPlan | None) -> AdapterState:
    """What the server serves and expects back under ``plan``: ``state`` less its personal
    tensors."""
    return split_personal(state, plan.parts)[0] if plan is not None and plan.parts else state


def kept_personal(state: AdapterState) -> AdapterState:
    """The personal tensors in a client's kept state, without their prefix."""
    return {k[len(PERSONAL) :]: v for k, v in state.items() if k.startswith(PERSONAL)}


def with_personal(state: AdapterState, personal: AdapterState) -> AdapterState:
    """``state`` with its personal tensors replaced by ``personal`` (other parts kept)."""
    others = {k: v for k, v in state.items() if not k.startswith(PERSONAL)}
    return others | {PERSONAL + k: v.detach().cpu() for k, v in personal.items()}


class PersonalKit:
    """What one client process builds once for personalisation, over the shared frozen base:
    the method's freshly initialised adapter (where a personal part starts) and, for
    ``dual``, the model with the personal LoRA beside the global one."""

    def __init__(
        self,
        base: nn.Module,
        method: str,
        spec: MethodSpec,
        arch: Architecture,
        seed: int,
        device: torch.device,
        base_id: str = "",
    ) -> None:
        self.base, self.method, self.spec, self.arch = base, method, spec, arch
        self.seed, self.device, self.base_id = seed, device, base_id
        self._initial: AdapterState | None = None
        self._dual: dict[int, tuple[nn.Module, AdapterState]] = {}

    def initial(self) -> AdapterState:
        """The run method's adapter as ``apply_shared`` initialises it (seeded: the state
        every client and the server start from)."""
        if self._initial is None:
            model = apply_shared(self.base, self.spec, self.arch, self.seed)
            self._initial = {k: v.cpu() for k, v in get_adapter_state(model).items()}
        return self._initial

    def dual(self, rank: int) -> tuple[nn.Module, AdapterState]:
        """The run's LoRA model with a personal LoRA of ``rank`` beside it (both active and
        trained), and the personal LoRA's seeded initial state."""
        if rank not in self._dual:
            model = apply_shared(self.base, self.spec, self.arch, self.seed)
            if not isinstance(model, PeftModel) or model.peft_config["default"].peft_type != "LORA":
                raise FedpeftError(
                    "`personalization.mode = 'dual'` adds a personal LoRA beside the global one "
                    "and needs `peft.method = 'lora'`."
                )
            config = copy.deepcopy(model.peft_config["default"])
            assert isinstance(config, LoraConfig)
            config.r, config.lora_alpha, config.use_dora = rank, 2 * rank, False
            config.modules_to_save, config.rank_pattern, config.alpha_pattern = None, {}, {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed ^ _DUAL_SEED)
                # PeftModel's own add_adapter: the sequence-classification subclass would
                # give the personal adapter a second copy of the head.
                PeftModel.add_adapter(model, ADAPTER, config)
            model.base_model.set_adapter(["default", ADAPTER])  # type: ignore[operator]
            model = model.to(self.device)
            init = {k: v.detach().cpu().clone() for k, v in personal_adapter(model).items()}
            self._dual[rank] = (model, init)
        return self._dual[rank]


def merged_dual(model: nn.Module) -> tuple[LoraConfig, AdapterState]:
    """Dual's two LoRAs as ONE LoRA of rank ``r + r_p`` (scale 1), exactly:
    ``ΔW = s_g·B_g A_g + s_p·B_p A_p = [s_g·B_g, s_p·B_p] · [A_g; A_p]`` — a config and
    state that ``PeftModel.from_pretrained`` loads as an ordinary LoRA adapter."""
    assert isinstance(model, PeftModel)
    configs = model.peft_config
    glob, mine = configs["default"], configs[ADAPTER]
    assert isinstance(glob, LoraConfig) and isinstance(mine, LoraConfig)
    if glob.rank_pattern or glob.alpha_pattern or glob.use_dora:
        raise FedpeftError(
            "dual's composed adapter needs the global LoRA at one rank and scale everywhere "
            "(no rank_pattern, alpha_pattern or DoRA)."
        )
    merged = copy.deepcopy(glob)
    merged.r = merged.lora_alpha = glob.r + mine.r
    merged.use_rslora = False
    state = get_adapter_state(model)
    personal = personal_adapter(model)
    s_g, s_p = _scale(glob), _scale(mine)
    for key in personal:
        if ".lora_A." in key:
            state[key] = torch.cat([state[key], personal[key]], dim=0)
        else:
            state[key] = torch.cat([s_g * state[key], s_p * personal[key]], dim=1)
    return merged, state


def _scale(config: LoraConfig) -> float:
    """PEFT's LoRA scale: ``α/r`` (rank-stabilised: ``α/√r``)."""
    return float(config.lora_alpha) / (math.sqrt(config.r) if config.use_rslora else config.r)


def personal_adapter(model: nn.Module) -> AdapterState:
    """Dual's personal LoRA tensors (peft's keys, adapter name stripped)."""
    assert isinstance(model, PeftModel)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    return {k: v.detach().clone() for k, v in state.items()}


def personalised(
    model: nn.Module,
    served: AdapterState,
    plan: PersonalPlan,
    kept: AdapterState,
    kit: PersonalKit | None,
    data: ClientData | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """The model this client trains and scores as its own: ``served`` (the global's shared
    tensors) joined with its personal part (what it kept, else the fresh initialisation —
    for a ``head_start = "lda"`` head, given the client's training ``data``, the local
    discriminant: module docstring), loaded. Without a plan that keeps anything, ``model``
    with ``served`` loaded."""
    if not plan.keeps:
        set_adapter_state(model, served)
        return model
    if kit is None:
        raise FedpeftError("this client was asked to keep a personal module but cannot build one.")
    mine = kept_personal(kept)
    if plan.rank:
        model, init = kit.dual(plan.rank)
        set_adapter_state(model, served)
        _check_personal(mine, init, "its personal LoRA")
        set_peft_model_state_dict(model, mine or init, adapter_name=ADAPTER)
        return model
    _, init = split_personal(kit.initial(), plan.parts)
    if not init:
        raise FedpeftError(
            f"`personalization.mode = {plan.mode!r}` keeps {list(plan.parts)} local, but the "
            "adapter has no such tensor."
        )
    _check_personal(mine, init, f"its {plan.mode} tensors")
    set_adapter_state(model, served | (mine or init))
    if not mine and plan.head_start == "lda" and data is not None and len(data.indices):
        start = local_head(model, served | init, data, device or torch.device("cpu"))
        set_adapter_state(model, start)
    return model


def local_head(
    model: nn.Module, state: AdapterState, data: ClientData, device: torch.device
) -> AdapterState:
    """``state`` (loaded in ``model``) with its classifier set to the linear discriminant of
    the client's own examples' features (the nearest class mean where they have no spread
    to estimate a covariance from: a single example); classes it holds none of: a zero row,
    and a bias ``UNHELD_MARGIN`` below the lowest held one (module docstring)."""
    stats = class_feature_stats(model, data, num_classes(state), _STATS_BATCH, device)
    try:
        out = lda_head(state, stats)
    except torch.linalg.LinAlgError:  # no spread to estimate (one example, or all alike)
        out = ncm_head(state, stats)
    unheld = stats[STATS_COUNT] == 0
    if bool(unheld.any()):
        w_key, b_key = head_keys(out)
        weight = out[w_key].clone()
        weight[unheld] = 0
        out[w_key] = weight
        if b_key is not None:
            bias = out[b_key].clone()
            bias[unheld] = bias[~unheld].min() - UNHELD_MARGIN
            out[b_key] = bias
    return out


def personal_state(model: nn.Module, trained: AdapterState, plan: PersonalPlan) -> AdapterState:
    """The personal part of a trained model (what the client keeps)."""
    if plan.rank:
        return personal_adapter(model)
    return split_personal(trained, plan.parts)[1]


def _check_personal(mine: AdapterState, init: AdapterState, what: str) -> None:
    """A kept personal part must fit the module it is loaded into."""
    if mine and (mine.keys() != init.keys() or any(mine[k].shape != init[k].shape for k in init)):
        raise FedpeftError(
            f"this client's kept state does not fit {what}; it was written by another "
            "configuration (remove the client's state folder to start it afresh)."
        )
