"""The defining step of each baseline method, checked against numpy's SVD and by invariants:
FeDeRA (LoRA from the SVD of W₀), SLoRA's stage 1 (sparse update on a seeded mask) and
stage 2 (LoRA from the SVD of the stage-1 update)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from fedpeft.errors import FedpeftError
from fedpeft.peft import get_adapter_state, model_architecture, parse_spec, save_adapter
from fedpeft.peft.share import apply_shared
from fedpeft.peft.sparse import mask_indices

TARGETS = ("query", "value")


def _bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (4, 9), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    inner = model.base_model.model
    return {n: m for n, m in inner.named_modules() if hasattr(m, "lora_A") and n.endswith(TARGETS)}


def _rank_r(matrix: np.ndarray, r: int) -> np.ndarray:
    """The best rank-r approximation by numpy's SVD (the independent reference)."""
    u, s, vh = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _product(layer: torch.nn.Module) -> np.ndarray:
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (float(layer.scaling["default"]) * (b @ a)).detach().double().numpy()


def test_federa_starts_from_the_top_singular_directions_of_w0() -> None:
    base = _bert()
    pristine = {n: p.detach().clone() for n, p in base.named_parameters()}
    spec = parse_spec("federa", {"r": 4, "alpha": 8.0})
    model = apply_shared(base, spec, model_architecture(base), seed=0)
    layers = _lora_layers(model)
    assert len(layers) == 4  # query and value of 2 blocks
    for name, layer in layers.items():
        w0 = pristine[f"{name}.weight"].double().numpy()
        np.testing.assert_allclose(_product(layer), _rank_r(w0, 4), atol=1e-5)
        residual = layer.base_layer.weight.detach().double().numpy()
        np.testing.assert_allclose(residual + _product(layer), w0, atol=1e-5)  # start = W₀
    # the shared base is never written: its weights are the pristine ones
    assert all(torch.equal(p, pristine[n]) for n, p in base.named_parameters())
    # a second model on the same base starts from the same factors
    again = _lora_layers(apply_shared(base, spec, model_architecture(base), seed=0))
    for name, layer in layers.items():
        assert torch.equal(layer.lora_A["default"].weight, again[name].lora_A["default"].weight)


def test_federa_differs_from_lora_only_in_its_start() -> None:
    base = _bert()
    arch = model_architecture(base)
    lora, federa = parse_spec("lora", {"r": 4}), parse_spec("federa", {"r": 4})
    assert federa.trainable_params(arch) == lora.trainable_params(arch)
    fed_model = apply_shared(base, federa, arch, seed=0)
    lora_model = apply_shared(base, lora, arch, seed=0)
    assert get_adapter_state(fed_model).keys() == get_adapter_state(lora_model).keys()
    b = {k: v for k, v in get_adapter_state(fed_model).items() if "lora_B" in k}
    assert all(v.abs().sum() > 0 for v in b.values())  # LoRA's B starts at 0; FeDeRA's does not
    with torch.no_grad():
        torch.testing.assert_close(fed_model.eval()(**_batch()).logits, base(**_batch()).logits)


def test_sparse_mask_is_seeded_per_projection_and_of_the_stated_density() -> None:
    a = mask_indices("encoder.layer.0.attention.self.query", 1024, 0.05, seed=3)
    assert len(a) == 51 and len(set(a.tolist())) == 51 and a.tolist() == sorted(a.tolist())
    assert torch.equal(a, mask_indices("encoder.layer.0.attention.self.query", 1024, 0.05, 3))
    assert not torch.equal(a, mask_indices("encoder.layer.1.attention.self.query", 1024, 0.05, 3))
    assert not torch.equal(a, mask_indices("encoder.layer.0.attention.self.query", 1024, 0.05, 4))


def test_sparse_training_changes_only_the_masked_entries() -> None:
    base = _bert()
    spec = parse_spec("sparse", {"density": 0.1, "target_modules": list(TARGETS)})
    arch = model_architecture(base)
    model = apply_shared(base, spec, arch, seed=0)
    assert spec.trainable_params(arch) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**_batch(), labels=torch.tensor([0, 1, 2, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    updates = spec.dense_updates(arch, get_adapter_state(model))
    assert set(updates) == {lin.name for lin in spec.targets(arch)}
    for name, update in updates.items():
        changed = torch.nonzero(update.flatten()).flatten()
        mask = mask_indices(name, update.numel(), 0.1, 0)
        assert set(changed.tolist()) <= set(mask.tolist()) and len(changed) > 0
        # the effective weight W₀ + scatter_M(δ) is what the layer computes
        layer = model.get_submodule(name)
        x = torch.randn(2, update.shape[1], generator=torch.Generator().manual_seed(1))
        expected = x @ (layer.base.weight + update).T + layer.base.bias
        torch.testing.assert_close(layer(x), expected)


def _stage1(tmp_path: Path, rank: int | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """A trained-looking ``sparse`` adapter saved as a run's ``adapter/`` folder (random δ;
    with ``rank``, δ is chosen so that every dense update has that rank at most)."""
    base = _bert()
    spec = parse_spec("sparse", {"density": 1.0 if rank else 0.2, "target_modules": list(TARGETS)})
    arch = model_architecture(base)
    model = apply_shared(base, spec, arch, seed=0)
    g = torch.Generator().manual_seed(2)
    state = {
        k: 0.05 * torch.randn(v.shape, generator=g) for k, v in get_adapter_state(model).items()
    }
    if rank:  # density 1: the mask is every entry, so δ is a permutation of a low-rank W
        for lin in spec.targets(arch):
            low = torch.randn(lin.d_out, rank, generator=g) @ torch.randn(
                rank, lin.d_in, generator=g
            )
            index = mask_indices(lin.name, lin.d_in * lin.d_out, 1.0, 0)
            state[f"{lin.name}.sparse_delta"] = 0.01 * low.flatten()[index]
    save_adapter(model, state, tmp_path / "run" / "adapter", "tiny", "sparse", spec)
    return tmp_path / "run", state


def test_slora_starts_from_the_rank_r_svd_of_the_stage1_update(tmp_path: Path) -> None:
    run, state = _stage1(tmp_path)
    base = _bert()
    arch = model_architecture(base)
    sparse = parse_spec("sparse", {"density": 0.2, "target_modules": list(TARGETS)})
    updates = sparse.dense_updates(arch, state)
    spec = parse_spec("slora", {"r": 4, "alpha": 8.0, "init_from": str(run)})
    model = apply_shared(base, spec, arch, seed=0)
    for name, layer in _lora_layers(model).items():
        np.testing.assert_allclose(
            _product(layer), _rank_r(updates[name].double().numpy(), 4), atol=1e-6
        )
    head = {k.split(".")[-1]: v for k, v in get_adapter_state(model).items() if "classifier" in k}
    assert head.keys() == {"weight", "bias"}  # the stage-1 head carries over
    assert all(torch.equal(v, state[f"classifier.{k}"]) for k, v in head.items())


def test_slora_of_a_low_rank_update_reproduces_the_stage1_model(tmp_path: Path) -> None:
    run, state = _stage1(tmp_path, rank=2)
    base = _bert()
    arch = model_architecture(base)
    stage1 = apply_shared(
        base, parse_spec("sparse", {"density": 1.0, "target_modules": list(TARGETS)}), arch, 0
    )
    stage1.load_state_dict({**stage1.state_dict(), **state})
    stage2 = apply_shared(base, parse_spec("slora", {"r": 2, "init_from": str(run)}), arch, 0)
    stage1.eval(), stage2.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            stage2(**_batch()).logits, stage1(**_batch()).logits, atol=1e-5, rtol=1e-4
        )


def test_slora_refuses_a_folder_that_is_not_a_sparse_run(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match="holds no stage-1 adapter"):
        apply_shared(
            _bert(),
            parse_spec("slora", {"init_from": str(tmp_path)}),
            model_architecture(_bert()),
            0,
        )
    lora = parse_spec("lora", {})
    model = apply_shared(_bert(), lora, model_architecture(_bert()), 0)
    (tmp_path / "x").mkdir()
    save_adapter(
        model, get_adapter_state(model), tmp_path / "x" / "adapter", "tiny", "bitfit", lora
    )
    (tmp_path / "x" / "adapter" / "fedpeft_adapter.json").write_text('{"method": "bitfit"}')
    with pytest.raises(FedpeftError, match="holds a run of 'bitfit'"):
        apply_shared(
            _bert(),
            parse_spec("slora", {"init_from": str(tmp_path / "x")}),
            model_architecture(_bert()),
            0,
        )
