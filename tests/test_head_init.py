"""FedNCM head initialisation: client feature statistics against a direct computation,
the server's head against numpy, and the pieces agree on their keys."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.aggregation import head_init
from fedpeft.aggregation.head_init import (
    STATS_COUNT,
    STATS_SECOND,
    STATS_SUM,
    head_keys,
    lda_head,
    ncm_head,
    sum_stats,
)
from fedpeft.client import ClientData, features
from fedpeft.client.features import class_feature_stats
from fedpeft.peft import get_adapter_state
from fedpeft.server.task import build_task
from tests.conftest import class_stats, tiny_config


def test_client_and_server_agree_on_keys_and_heads() -> None:
    assert (features.STATS_SUM, features.STATS_COUNT, features.STATS_SECOND) == (
        STATS_SUM,
        STATS_COUNT,
        STATS_SECOND,
    )
    assert features.HEAD_MODULES == head_init.HEAD_MODULES


@pytest.mark.parametrize("method", ["lora", "head"])
def test_feature_stats_are_the_head_inputs_summed_per_class(tmp_path: Path, method: str) -> None:
    cfg = tiny_config(tmp_path, f"peft.method='{method}'", "data.dataset='ag_news'")
    task = build_task(cfg)
    idx = np.arange(40)
    stats = class_feature_stats(task.model, ClientData(task.data.train, idx), 4, 16, task.device)
    base = task.base
    assert base is not None
    base.eval()
    with torch.inference_mode():
        b = task.data.train.collate(idx)
        pooled = base.bert(input_ids=b.input_ids, attention_mask=b.attention_mask)[1].double()
    labels = task.data.train.labels[idx]
    for c in range(4):
        assert stats[STATS_COUNT][c] == (labels == c).sum()
        assert torch.allclose(stats[STATS_SUM][c], pooled[torch.from_numpy(labels == c)].sum(0))
    assert torch.allclose(stats[STATS_SECOND], pooled.T @ pooled)


def test_lda_head_is_scikit_learns_shrunk_lda() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 3
    feats = torch.randn(90, 6, generator=gen, dtype=torch.float64) + labels[:, None] * 0.7
    total = sum_stats(
        [class_stats(feats[:40], labels[:40], 4), class_stats(feats[40:], labels[40:], 4)]
    )
    state = {"classifier.weight": torch.zeros(4, 6), "classifier.bias": torch.full((4,), 0.5)}
    out = lda_head(state, total, shrinkage=0.2)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.2, priors=[1 / 3] * 3)
    ref.fit(feats.numpy(), labels.numpy())
    # scikit-learn adds log(prior); ours is flat. Ours is centred over the held classes and
    # divided by t = max(1, sd / ln 4), sd the RMS of those centred logits over the examples
    coef = ref.coef_ - ref.coef_.mean(0)
    flat = ref.intercept_ - np.log(1 / 3)
    flat = flat - flat.mean()
    sd = float(np.sqrt(((feats.numpy() @ coef.T + flat) ** 2).mean()))
    t = max(1.0, sd / np.log(4))
    assert t > 1.0  # the case exercises the temperature
    assert np.allclose(out["classifier.weight"][:3].numpy(), coef / t, atol=1e-4)
    assert np.allclose(out["classifier.bias"][:3].numpy(), flat / t, atol=1e-4)
    logits = (
        feats.numpy() @ out["classifier.weight"][:3].numpy().T + out["classifier.bias"][:3].numpy()
    )
    assert (logits.argmax(1) == ref.predict(feats.numpy())).all()  # the same decisions
    assert torch.equal(out["classifier.weight"][3], torch.zeros(6))  # nobody holds class 3
    assert out["classifier.bias"][3] == 0.5
    with pytest.raises(ValueError):
        lda_head(state, total, shrinkage=0.0)


def test_lda_head_of_classes_whose_examples_coincide_is_the_nearest_mean() -> None:
    # a file of repeated rows: S = 0 exactly (integer features), so Σ_λ would be singular
    rows = torch.tensor([[1.0, 0, 2, 0], [0, 3, 1, 0], [2, 2, 0, 1]], dtype=torch.float64)
    labels = torch.arange(30) % 3
    total = sum_stats([class_stats(rows[labels], labels, 3)])
    state = {"classifier.weight": torch.zeros(3, 4), "classifier.bias": torch.zeros(3)}
    out = lda_head(state, total)
    logits = rows.float() @ out["classifier.weight"].T + out["classifier.bias"]
    assert torch.isfinite(logits).all()
    assert logits.argmax(1).tolist() == [0, 1, 2]
    # Σ_λ is then a multiple of I: the nearest-mean rule, W_c ∝ μ_c − μ̄ (classes balanced)
    centred = rows - rows.mean(0)
    w = out["classifier.weight"].double()
    assert torch.allclose(w / w.norm(), centred / centred.norm(), atol=1e-5)


def test_ncm_head_matches_numpy_and_predicts_the_nearest_centred_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 5, generator=gen, dtype=torch.float64) + 2.0
    labels = torch.arange(60) % 3  # classes 0–2 present, class 3 held by nobody
    parts = [slice(0, 25), slice(25, 60)]
    stats = [class_stats(feats[p], labels[p], 4) for p in parts]
    total = sum_stats(stats)
    state = {
        "base_model.model.classifier.weight": torch.randn(4, 5, generator=gen),
        "base_model.model.classifier.bias": torch.randn(4, generator=gen),
        "base_model.model.x.lora_A.weight": torch.randn(2, 5, generator=gen),
    }
    out = ncm_head(state, total)
    w_key, b_key = head_keys(state)
    assert b_key is not None
    f, y = feats.numpy(), labels.numpy()
    g = f.mean(0)
    for c in range(3):
        d = f[y == c].mean(0) - g
        assert np.allclose(out[w_key][c].numpy(), d / np.linalg.norm(d), atol=1e-6)
        assert out[b_key][c].item() == pytest.approx(-(d / np.linalg.norm(d)) @ g, abs=1e-5)
    assert torch.equal(out[w_key][3], state[w_key][3]) and out[b_key][3] == state[b_key][3]
    assert out["base_model.model.x.lora_A.weight"] is state["base_model.model.x.lora_A.weight"]
    # the logits are the centred features' projections on the class directions
    logits = (feats.float() @ out[w_key][:3].T + out[b_key][:3]).double()
    proj = (feats - torch.from_numpy(g)) @ out[w_key][:3].double().T
    assert torch.allclose(logits, proj, atol=1e-4)
    with pytest.raises(ValueError):
        sum_stats([{STATS_SUM: torch.zeros(2, 5)}])
    with pytest.raises(ValueError):
        sum_stats([stats[0], {**stats[1], STATS_SECOND: torch.zeros(4, 4)}])


def test_the_exported_state_has_the_head_keys(tmp_path: Path) -> None:
    task = build_task(tiny_config(tmp_path))
    w_key, b_key = head_keys(get_adapter_state(task.model))
    assert w_key.endswith("classifier.weight") and b_key == w_key[: -len("weight")] + "bias"


def test_round_zero_sets_the_head_and_leaves_out_bad_replies(tmp_path: Path) -> None:
    import json

    from fedpeft.client import ClientData
    from fedpeft.runtime.local.simulator import LocalClientPool, LocalGlobalModel, run_local
    from fedpeft.server.head_init import init_head
    from fedpeft.server.state import ServerState

    cfg = tiny_config(
        tmp_path, "data.dataset='ag_news'", "server.head_init='lda'", "data.num_clients=3"
    )
    task = build_task(cfg)
    fresh = {k: v.cpu() for k, v in get_adapter_state(task.model).items()}
    stats = [
        class_feature_stats(task.model, ClientData(task.data.train, p), 4, 64, task.device)
        for p in task.data.partitions
    ]
    want = lda_head(fresh, sum_stats(stats))

    class Tampering(LocalClientPool):
        def fit(self, instruction, payload):  # type: ignore[no-untyped-def]
            reply = super().fit(instruction, payload)
            return reply[:-9] if instruction.client_id == 1 else reply

    server, info = init_head(
        cfg, LocalClientPool(task), LocalGlobalModel(task), ServerState({"global": fresh})
    )
    assert info is not None and info.clients == 3 and info.rule == "lda"
    assert all(torch.allclose(server.adapter[k], want[k], atol=1e-5) for k in want)
    _, bad = init_head(cfg, Tampering(task), LocalGlobalModel(task), ServerState({"global": fresh}))
    assert bad is not None and bad.clients == 2 and list(bad.rejected) == ["1"]
    result = run_local(cfg)
    saved = json.loads((result.run_dir / "head_init.json").read_text())
    assert saved["clients"] == 3 and saved["bytes_up"] > 0 and "accuracy" in saved["eval_after"]
    random_run = run_local(
        tiny_config(tmp_path, "data.dataset='ag_news'", "server.head_init='random'")
    )
    assert not (random_run.run_dir / "head_init.json").exists()


def test_auto_is_lda_unless_the_run_is_private(tmp_path: Path) -> None:
    from fedpeft.errors import FedpeftError
    from fedpeft.server.config_checks import check_combinations
    from fedpeft.server.head_when import head_rule
    from fedpeft.server.personal import check_personalization

    assert head_rule(tiny_config(tmp_path)) == "lda"  # the default
    dp = ("privacy.mode='central'", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0")
    assert head_rule(tiny_config(tmp_path, *dp)) == "random"
    assert head_rule(tiny_config(tmp_path, "server.head_init='ncm'")) == "ncm"
    with pytest.raises(FedpeftError, match="server.head_init"):
        check_combinations(tiny_config(tmp_path, "server.head_init='lda'", *dp))
    # a personal head or lora_B never travels, and round 0 would serve it
    assert (
        head_rule(
            tiny_config(tmp_path, "personalization.mode='head'", "data.client_test_fraction=0.2")
        )
        == "random"
    )
    assert (
        head_rule(
            tiny_config(tmp_path, "personalization.mode='dual'", "data.client_test_fraction=0.2")
        )
        == "lda"
    )
    with pytest.raises(FedpeftError, match="personalization.mode"):
        check_personalization(
            tiny_config(
                tmp_path,
                "server.head_init='ncm'",
                "personalization.mode='lora_b'",
                "data.client_test_fraction=0.2",
            )
        )


@pytest.mark.parametrize("when", ["last", "every"])
def test_head_refresh_is_the_rule_over_statistics_under_the_trained_adapter(
    tmp_path: Path, when: str
) -> None:
    import json

    from fedpeft.peft import set_adapter_state
    from fedpeft.runtime.local.simulator import run_local

    cfg = tiny_config(
        tmp_path,
        "data.dataset='ag_news'",
        "server.head_init='lda'",
        "data.num_clients=3",
        f"server.head_refresh='{when}'",
    )
    result = run_local(cfg)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    refreshed = {r["round"]: r["head_refresh"] for r in rows if "head_refresh" in r}
    assert sorted(refreshed) == ([1, 2] if when == "every" else [2])
    assert all(
        v["clients"] == 3 and v["bytes_up"] > 0 < v["bytes_down"] for v in refreshed.values()
    )
    # its traffic is in the round's bytes: one refresh's worth more than the plain run's
    plain = run_local(
        tiny_config(
            tmp_path,
            "data.dataset='ag_news'",
            "server.head_init='lda'",
            "data.num_clients=3",
            "server.bias_refresh='none'",
        )
    )
    plain_rows = [json.loads(x) for x in (plain.run_dir / "metrics.jsonl").read_text().splitlines()]
    for row, plain_row in zip(rows, plain_rows, strict=True):
        extra = row.get("head_refresh", {"bytes_up": 0, "bytes_down": 0})
        assert abs(row["bytes_up"] - plain_row["bytes_up"] - extra["bytes_up"]) < 1000
        assert abs(row["bytes_down"] - plain_row["bytes_down"] - extra["bytes_down"]) < 1000
    # the final head: the LDA rule over every client's statistics under the final adapter
    task = build_task(cfg)
    set_adapter_state(task.model, result.state)
    stats = [
        class_feature_stats(task.model, ClientData(task.data.train, p), 4, 64, task.device)
        for p in task.data.partitions
    ]
    want = lda_head(result.state, sum_stats(stats))
    w_key, b_key = head_keys(want)
    assert b_key is not None
    for key in (w_key, b_key):
        assert torch.allclose(result.state[key], want[key], atol=1e-5)
    # everything else is what the round's aggregation left, unlike a run without refresh
    assert not torch.allclose(plain.state[w_key], result.state[w_key], atol=1e-4)
    assert all("head_refresh" not in r for r in plain.rounds)


def test_head_refresh_is_off_where_round_zero_is(tmp_path: Path) -> None:
    from fedpeft.server.head_when import refresh_due

    on = ("server.head_refresh='last'", "run.rounds=3")
    assert [refresh_due(tiny_config(tmp_path, *on), r) for r in (1, 2, 3)] == [False, False, True]
    assert not refresh_due(tiny_config(tmp_path, *on, "server.head_init='random'"), 3)
    dp = ("privacy.mode='central'", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0")
    assert not refresh_due(tiny_config(tmp_path, *on, *dp), 3)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (("server.mode='async'",), "no round's aggregation"),
        (("server.head_init='random'",), "starts at random"),
        (
            ("privacy.mode='central'", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0"),
            "starts at random",
        ),
        (("server.aggregator='clustered'",), "one global per cluster"),
    ],
)
def test_head_refresh_is_refused_where_it_cannot_run(
    tmp_path: Path, extra: tuple[str, ...], why: str
) -> None:
    from fedpeft.errors import FedpeftError
    from fedpeft.server.config_checks import check_combinations

    with pytest.raises(FedpeftError, match=f"head_refresh = 'every'` cannot run: .*{why}"):
        check_combinations(tiny_config(tmp_path, "server.head_refresh='every'", *extra))
    check_combinations(tiny_config(tmp_path, "server.head_refresh='every'"))  # the default runs


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (("model.name='tiny-llama'", "client.label_skew='logit_adjust'"), "client.label_skew"),
        (("model.name='tiny-llama'", "server.head_init='lda'"), "server.head_init"),
        (("data.dataset='squad'", "data.partition='iid'", "server.head_init='ncm'"), "head_init"),
    ],
)
def test_classifier_options_on_another_task_are_refused_not_ignored(
    tmp_path: Path, extra: tuple[str, ...], key: str
) -> None:
    from fedpeft.errors import FedpeftError
    from fedpeft.server.config_checks import check_combinations

    with pytest.raises(FedpeftError, match=f"{key} = .* acts on a classifier's class logits"):
        check_combinations(tiny_config(tmp_path, *extra))
    check_combinations(tiny_config(tmp_path, "client.label_skew='logit_adjust'"))  # classify
