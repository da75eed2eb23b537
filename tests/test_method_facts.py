"""Facts each PEFT method states about itself (``MethodSpec`` class attributes), checked
over every registry entry, and against the side tables they replaced for the methods that
existed then (stored values)."""

from __future__ import annotations

import pytest

from fedpeft.allocation import GainEstimator, make_candidate
from fedpeft.peft import get_method, method_names, supported_methods, supports
from fedpeft.peft.spec import BOTH_TASKS
from fedpeft.peft.support import IMAGE_FAMILIES

# The tables the facts moved out of (peft/support.py, allocation/gain.py, the registry's
# ``causal_lm`` flags): every method registered then must still state exactly these.
OLD_FAMILY_METHODS = {
    "efficientnet": {"bitfit", "full", "head", "lora"},
    "vit": {"bitfit", "full", "head", "houlsby", "ia3", "lora", "pfeiffer"},
    "clip": {"lora", "prompt"},
}
OLD_PRIORS = {
    "full": 0.8,
    "lora": 0.75,
    "houlsby": 0.75,
    "pfeiffer": 0.7,
    "ia3": 0.65,
    "prefix": 0.6,
    "bitfit": 0.6,
    "prompt": 0.55,
    "head": 0.5,
}
OLD_NOT_FOR_CAUSAL_LM = {"bitfit", "head"}


@pytest.mark.parametrize("method", method_names())
def test_every_method_states_its_facts(method: str) -> None:
    spec = get_method(method).spec
    assert spec.description
    assert spec.kind in ("reparameterised", "additive", "selective", "baseline")
    assert spec.image_families <= IMAGE_FAMILIES
    assert spec.tasks and spec.tasks <= BOTH_TASKS
    assert spec.gain_prior is None or 0.0 <= spec.gain_prior <= 1.0
    assert supports(method, "bert") and supports(method, "llama")  # text takes every method
    # a group envelope folds a scale only for methods that share one
    assert spec.envelope_group is not None or spec().envelope_alpha() is None


def test_old_tables_are_what_the_specs_now_say() -> None:
    for family, methods in OLD_FAMILY_METHODS.items():
        assert {m for m in OLD_PRIORS if supports(m, family)} == methods, family
        assert methods <= set(supported_methods(family))
    assert {m for m in OLD_PRIORS if m not in method_names(causal_lm=True)} == OLD_NOT_FOR_CAUSAL_LM
    estimator = GainEstimator()
    for method, prior in OLD_PRIORS.items():
        assert estimator.prior(make_candidate(method, {})) == prior, method


def test_configured_priors_override_the_methods_own() -> None:
    from fedpeft.allocation import GainConfig

    lora, head = make_candidate("lora", {}), make_candidate("head", {})
    estimator = GainEstimator(GainConfig(prior={"lora": 0.1}))
    assert estimator.prior(lora) == 0.1
    assert estimator.prior(head) == get_method("head").spec.gain_prior == 0.5


def test_lora_envelope_covers_its_members() -> None:
    """The largest rank keeps its α; layers and targets are unions, ``None`` wins."""
    spec = get_method("lora").spec
    small = spec(r=2, alpha=4.0, layers=[1], target_modules=["query"])
    big = spec(r=8, alpha=32.0, layers=[0], target_modules=["value"])
    env = spec.envelope([small, big])
    assert env.model_dump(include={"r", "alpha", "layers", "target_modules"}) == {
        "r": 8,
        "alpha": 32.0,
        "layers": [0, 1],
        "target_modules": ["query", "value"],
    }
    assert env.envelope_alpha() == 32.0
    everywhere = spec.envelope([small, spec(r=2, alpha=2.0)])
    assert everywhere.model_dump(include={"alpha", "layers", "target_modules"}) == {
        "alpha": 2.0,  # equal ranks: the later member's α
        "layers": None,
        "target_modules": None,
    }
