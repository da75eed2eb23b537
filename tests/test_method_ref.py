"""``MethodRef``: a PEFT configuration by value, parsed and validated in one place."""

from __future__ import annotations

import json

import pytest

from fedpeft.errors import FedpeftError
from fedpeft.peft import MethodRef, method_names, parse_method_ref


def test_equal_configurations_are_one_ref() -> None:
    plain, explicit = MethodRef.of("lora"), MethodRef.of("lora", {"r": 8, "alpha": 16})
    assert plain == explicit and hash(plain) == hash(explicit)
    assert plain.options == {} and plain.options_json == "{}"
    assert len({plain, explicit, MethodRef.of("lora", {"r": 4})}) == 2
    assert MethodRef.of("lora", {"r": 4}) != MethodRef.of("houlsby", {"size": 4})


def test_canonical_text_is_sorted_json_of_the_non_default_options() -> None:
    ref = MethodRef.of("lora", {"r": 4, "layers": [2, 1], "alpha": 8, "dropout": 0.05})
    expected = {"alpha": 8.0, "layers": [2, 1], "r": 4}  # dropout 0.05 is LoRA's default
    assert ref.options == expected
    assert ref.options_json == json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert ref.key == ("lora", ref.options_json)


@pytest.mark.parametrize("method", method_names())
def test_every_method_round_trips_through_the_wire_and_json(method: str) -> None:
    ref = MethodRef.of(method)
    assert parse_method_ref(method, ref.options_json) == ref
    again = MethodRef.from_json(json.loads(json.dumps(ref.to_json())))
    assert again == ref and again.spec == ref.spec


def test_the_empty_method_is_the_runs_own() -> None:
    default = MethodRef.of("ia3")
    assert parse_method_ref("", "{}", default) is default
    with pytest.raises(FedpeftError, match="names no PEFT method"):
        parse_method_ref("", "{}")


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [
        ("lora", "{r: 4}", "are not JSON"),
        ("lora", "[4]", "not a JSON object"),
        ("no_such_method", "{}", "not a registered PEFT method"),
        ("lora", '{"r": 0}', "`peft.r`: Input should be greater than 0"),
        ("lora", '{"alpha": Infinity}', "`peft.alpha`"),
    ],
)
def test_bad_wire_text_is_a_user_error(method: str, options: str, expected: str) -> None:
    with pytest.raises(FedpeftError, match=expected):
        parse_method_ref(method, options)


def test_from_json_checks_the_shape() -> None:
    with pytest.raises(FedpeftError, match="must be an object with a `method`"):
        MethodRef.from_json(["lora"])
    with pytest.raises(FedpeftError, match="must be an object"):
        MethodRef.from_json({"method": "lora", "options": [1]})
