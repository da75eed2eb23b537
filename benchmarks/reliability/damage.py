"""Damaged checkpoints: copies of a run stopped after round 2 of 3 (rounds 1 and 2 kept),
each damaged one way, then resumed; the end is compared with an uninterrupted run.

A variant ends as ``refused`` (one sentence, the folder left as it was), ``fell_back``
(resumed from round 1 and ended bitwise equal), ``resumed`` (from round 2, bitwise equal),
or ``WRONG`` (a different result, a changed folder after a refusal, or a traceback).
Variants marked ``forged`` also rewrite the manifest's sha256 to match the damage: a
manifest is a checksum against damage and mix-ups, not a signature, so such a variant
may be ``adopted`` (resumed to another result) by design.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import ASYNC, TINY, Exit, adapter_bytes, computed_logs, run_cli

ROUNDS = 3  # the base run stops after round 2, so rounds 1 and 2 are kept
FILES = ("safetensors", "json", "manifest.json")
CKPT = "checkpoint"


def _name(rnd: int, kind: str) -> str:
    return f"round-{rnd:06d}.{kind}"


@dataclass(frozen=True)
class Variant:
    name: str
    apply: Callable[[Path, dict[str, Path]], None]  # (the copy, other runs' folders)
    forged: bool = False


# ---- damage to bytes ---------------------------------------------------------------
def _bytes(path: Path, how: str, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    if how.startswith("flip"):
        at = {"flip_first": 0, "flip_middle": len(data) // 2, "flip_last": len(data) - 1}[how]
        data[at] ^= 1 << int(rng.integers(8))
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "zero":
        data = bytearray(len(data))
    elif how == "random":
        data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))


def _byte_variants(seed: int) -> list[Variant]:
    out = []
    for rnd in (1, 2):
        for kind in FILES:
            for how in ("flip_first", "flip_middle", "flip_last", "truncate", "zero", "random"):
                rng = np.random.default_rng([seed, rnd, FILES.index(kind), len(out)])
                out.append(
                    Variant(
                        f"{how} {_name(rnd, kind)}",
                        lambda run, _, r=rnd, k=kind, h=how, g=rng: _bytes(
                            run / CKPT / _name(r, k), h, g
                        ),
                    )
                )
            out.append(
                Variant(
                    f"delete {_name(rnd, kind)}",
                    lambda run, _, r=rnd, k=kind: (run / CKPT / _name(r, k)).unlink(),
                )
            )
    return out


# ---- damage to contents ------------------------------------------------------------
def _manifest(run: Path, rnd: int, **changes: object) -> None:
    path = run / CKPT / _name(rnd, "manifest.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _resign(run: Path, rnd: int, kind: str) -> None:
    """Rewrites round ``rnd``'s manifest so the sha256 of ``kind`` matches (a forgery)."""
    path = run / CKPT / _name(rnd, "manifest.json")
    manifest = json.loads(path.read_text())
    data = (run / CKPT / _name(rnd, kind)).read_bytes()
    manifest["files"][_name(rnd, kind)] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest))


def _tensors(run: Path, rnd: int, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from fedpeft.compression import decode, encode

    path = run / CKPT / _name(rnd, "safetensors")
    flat, meta = decode(path.read_bytes())
    change(flat)
    path.write_bytes(encode(flat, meta))


def _first_adapter(flat: dict[str, torch.Tensor]) -> str:
    return sorted(k for k in flat if k.startswith("adapters::"))[0]


def _fill(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(flat: dict[str, torch.Tensor]) -> None:
        key = _first_adapter(flat)
        flat[key] = flat[key].clone().fill_(value)

    return change


def _inject(flat: dict[str, torch.Tensor]) -> None:
    flat["adapters::intruder::w"] = torch.ones(3)


def _reshape(flat: dict[str, torch.Tensor]) -> None:
    key = _first_adapter(flat)
    flat[key] = torch.zeros(flat[key].numel() + 1)


def _state_json(run: Path, rnd: int, change: Callable[[dict[str, Any]], None]) -> None:
    path = run / CKPT / _name(rnd, "json")
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


Apply = Callable[[Path, dict[str, Path]], None]


def _seq(*steps: Apply) -> Apply:
    def apply(run: Path, others: dict[str, Path]) -> None:
        for step in steps:
            step(run, others)

    return apply


def _at(rounds: tuple[int, ...], fn: Callable[..., None], **kw: Any) -> Apply:
    """``fn(run, rnd, **kw)`` for each of ``rounds``."""

    def apply(run: Path, _: dict[str, Path]) -> None:
        for rnd in rounds:
            fn(run, rnd, **kw)

    return apply


def _forge(kind: str, fn: Callable[..., None], **kw: Any) -> Apply:
    """Round 2 changed by ``fn``, and its manifest rewritten to match."""
    return _seq(_at((2,), fn, **kw), _at((2,), _resign, kind=kind))


def _swap(kinds: tuple[str, ...]) -> Apply:
    def apply(run: Path, _: dict[str, Path]) -> None:
        ckpt = run / CKPT
        for kind in kinds:
            one, two = ckpt / _name(1, kind), ckpt / _name(2, kind)
            one.rename(ckpt / "swap")
            two.rename(one)
            (ckpt / "swap").rename(two)

    return apply


def _other_run(key: str, rounds: tuple[int, ...]) -> Apply:
    def apply(run: Path, others: dict[str, Path]) -> None:
        for rnd in rounds:
            for kind in FILES:
                shutil.copyfile(
                    others[key] / CKPT / _name(rnd, kind), run / CKPT / _name(rnd, kind)
                )

    return apply


def _write(*rels: str, data: bytes = b"half", mode: str = "wb") -> Apply:
    def apply(run: Path, _: dict[str, Path]) -> None:
        for rel in rels:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            with (run / rel).open(mode) as f:
                f.write(data)

    return apply


def _delete(*rels: str) -> Apply:
    def apply(run: Path, _: dict[str, Path]) -> None:
        for rel in rels:
            path = run / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    return apply


def _content_variants() -> list[Variant]:
    V, both, two = Variant, (1, 2), (2,)
    other_fp = {"config_fingerprint": "0" * 64}
    ck = lambda *names: [f"{CKPT}/{n}" for n in names]  # noqa: E731
    return [
        V("swap both rounds' tensor files", _swap(("safetensors",))),
        V("swap both rounds' state files", _swap(("json",))),
        V("swap both rounds' manifests", _swap(("manifest.json",))),
        V("swap round 1 and round 2 whole", _swap(FILES)),
        V("manifest of round 2 with another fingerprint", _at(two, _manifest, **other_fp)),
        V("manifests of both rounds with another fingerprint", _at(both, _manifest, **other_fp)),
        V("manifest of round 2 with format 99", _at(two, _manifest, format=99)),
        V("manifest of round 2 naming round 5", _at(two, _manifest, round=5)),
        V("manifests of both rounds naming round 5", _at(both, _manifest, round=5)),
        V(
            "manifest of round 2 pointing at ../config.toml",
            _at(two, _manifest, files={"../config.toml": "0" * 64}),
        ),
        V("manifest of round 2 without files", _at(two, _manifest, files=None)),
        V(
            "manifest of round 2 is a JSON list",
            _write(*ck(_name(2, "manifest.json")), data=b"[1]"),
        ),
        V(
            "format 1: only a state.json",
            _seq(_delete(CKPT), _write(*ck("state.json"), data=b'{"round": 2, "extra": {}}')),
        ),
        V("1e30 in a round-2 tensor, manifest as is", _at(two, _tensors, change=_fill(1e30))),
        V("NaN in a round-2 tensor, manifest as is", _at(two, _tensors, change=_fill(math.nan))),
        V(
            "1e30 in a tensor of both rounds, manifests as is",
            _at(both, _tensors, change=_fill(1e30)),
        ),
        V("injected group in round 2, manifest as is", _at(two, _tensors, change=_inject)),
        V("injected group in both rounds, manifests as is", _at(both, _tensors, change=_inject)),
        V(
            "forged: 1e30 in a round-2 tensor",
            _forge("safetensors", _tensors, change=_fill(1e30)),
            True,
        ),
        V(
            "forged: NaN in a round-2 tensor",
            _forge("safetensors", _tensors, change=_fill(math.nan)),
            True,
        ),
        V(
            "forged: injected group in round 2",
            _forge("safetensors", _tensors, change=_inject),
            True,
        ),
        V(
            "forged: a round-2 tensor of another shape",
            _forge("safetensors", _tensors, change=_reshape),
            True,
        ),
        V(
            "forged: round-2 state names round 7",
            _forge("json", _state_json, change=lambda raw: raw.update(round=7)),
            True,
        ),
        V(
            "forged: round-2 state names another main group",
            _forge("json", _state_json, change=lambda raw: raw.update(main="x")),
            True,
        ),
        V("checkpoint of a run with another seed", _other_run("seed", both)),
        V("checkpoint of a run with another lr", _other_run("lr", both)),
        V("round 2 of a run with another seed, round 1 own", _other_run("seed", two)),
        V(
            "leftover temporaries of round 3",
            _write(*ck(*(f".{_name(3, k)}.tmp-x1y2" for k in FILES))),
        ),
        V(
            "round 3 written but not committed",
            _write(*ck(_name(3, "safetensors"), _name(3, "json"))),
        ),
        V("a stray round-3 manifest", _write(*ck(_name(3, "manifest.json")), data=b"{")),
        V(
            "stray round-3 and round-4 manifests",
            _write(*ck(_name(3, "manifest.json"), _name(4, "manifest.json")), data=b"{"),
        ),
        V("round 1 deleted whole", _delete(*ck(*(_name(1, k) for k in FILES)))),
        V("round 2's manifest deleted", _delete(*ck(_name(2, "manifest.json")))),
        V("a leftover .adapter.tmp folder", _write(".adapter.tmp/adapter_model.safetensors")),
        V(
            "a half-written metrics line",
            _write("metrics.jsonl", data=b'{"round": 3, "eval": {"accur', mode="ab"),
        ),
        V(
            "a metrics line of round 3 after the checkpoint",
            _write("metrics.jsonl", data=b'{"round": 3}\n', mode="ab"),
        ),
        V("the checkpoint folder deleted", _delete(CKPT)),
        V("an empty checkpoint folder", _delete(*ck(*(_name(r, k) for r in both for k in FILES)))),
        V("config.toml deleted", _delete("config.toml")),
    ]


def _async_variants() -> list[Variant]:
    """A few on an asynchronous run: its state file holds the clock, the generator and the
    clients in flight."""
    V = Variant

    def drop_inflight(flat: dict[str, torch.Tensor]) -> None:
        for key in [k for k in flat if k.startswith("inflight::")]:
            del flat[key]

    def progress(**changes: Any) -> Callable[[dict[str, Any]], None]:
        return lambda raw: raw["async"].update(changes)

    def rename_status(raw: dict[str, Any]) -> None:
        raw["async"]["flights"][0]["record"]["status"] = "vanished"

    pcg = {
        "bit_generator": "PCG64",
        "state": {"state": 1, "inc": 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    flips = [
        V(f"async: flip_middle {_name(r, k)}", _at((r,), _flip_middle, kind=k))
        for r in (1, 2)
        for k in FILES
    ]
    return [
        *flips,
        V(
            "async: forged: in-flight tensors dropped",
            _forge("safetensors", _tensors, change=drop_inflight),
            True,
        ),
        V(
            "async: forged: the generator's state replaced",
            _forge("json", _state_json, change=progress(rng=pcg)),
            True,
        ),
        V(
            "async: forged: the clock set to NaN",
            _forge("json", _state_json, change=progress(now=math.nan)),
            True,
        ),
        V(
            "async: forged: an in-flight status renamed",
            _forge("json", _state_json, change=rename_status),
            True,
        ),
    ]


def _flip_middle(run: Path, rnd: int, kind: str) -> None:
    _bytes(run / CKPT / _name(rnd, kind), "flip_middle", np.random.default_rng([7, rnd]))


# ---- running -----------------------------------------------------------------------
class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def config(out: Path, *extra: str):  # type: ignore[no-untyped-def]
    from fedpeft.config import load_config

    return load_config(
        overrides=[*TINY, f"run.rounds={ROUNDS}", f"run.output_dir={str(out)!r}", *extra]
    )


def stopped_run(cfg, after: int) -> Path:  # type: ignore[no-untyped-def]
    """A run interrupted after round ``after`` (its checkpoint is committed)."""
    from fedpeft.runtime.local import run_local
    from fedpeft.server import Observer

    class Stop(Observer):
        def on_round_end(self, record) -> None:  # type: ignore[no-untyped-def]
            if record.round == after:
                raise KeyboardInterrupt

    before = set(Path(cfg.run.output_dir).glob("*"))
    with contextlib.suppress(KeyboardInterrupt):
        run_local(cfg, observer=Stop())
    (new,) = set(Path(cfg.run.output_dir).glob("*")) - before
    return new


def resume(
    cfg, variant: Variant, base: Path, others: dict[str, Path], reference: Path, work: Path
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One variant, resumed in this process."""
    from fedpeft.errors import FedpeftError
    from fedpeft.runtime.local import run_local

    run = Path(shutil.copytree(base, work / base.name))
    variant.apply(run, others)
    before = _files(run)
    warnings = _Warnings()
    logger = logging.getLogger("fedpeft")
    logger.addHandler(warnings)
    row: dict[str, Any] = {"variant": variant.name, "forged": variant.forged}
    try:
        result = run_local(cfg, resume=run)
    except FedpeftError as e:
        changed = sorted(k for k in {*before, *_files(run)} if before.get(k) != _files(run).get(k))
        one = "\n" not in str(e) and str(e).endswith(".")
        ok = one and not changed
        return {
            **row,
            "outcome": "refused" if ok else "WRONG",
            "sentence": str(e),
            "changed_files": changed,
        }
    except Exception:  # noqa: BLE001 - a traceback is what the study looks for
        return {**row, "outcome": "WRONG", "traceback": traceback.format_exc()[-1500:]}
    finally:
        logger.removeHandler(warnings)
    equal = adapter_bytes(run) == adapter_bytes(reference)
    logs = computed_logs(run) == computed_logs(reference)
    start = result.summary.get("resumed_from_round")
    row.update(
        resumed_from_round=start, adapter_equal=equal, logs_equal=logs, warnings=warnings.messages
    )
    if not equal:
        row["outcome"] = "adopted" if variant.forged else "WRONG"
    else:
        row["outcome"] = "resumed" if start == ROUNDS - 1 else "fell_back"
    return row


def via_cli(
    variant: Variant, base: Path, others: dict[str, Path], reference: Path, work: Path
) -> dict[str, Any]:
    """The same variant resumed by ``fedpeft run --resume`` in a fresh process."""
    run = Path(shutil.copytree(base, work / base.name))
    variant.apply(run, others)
    done: Exit = run_cli(["run", "--resume", str(run)], work / "cli.log")
    return {
        "variant": variant.name,
        "exit": done.code,
        "one_sentence": done.one_sentence,
        "sentence": done.error(),
        "adapter_equal": adapter_bytes(run) == adapter_bytes(reference),
    }


def fewer_rounds(base: Path, work: Path) -> dict[str, Any]:
    """``fedpeft run --resume RUN --set run.rounds=1`` on a run that completed 2 rounds."""
    run = Path(shutil.copytree(base, work / base.name))
    before = _files(run)
    done = run_cli(["run", "--resume", str(run), "--set", "run.rounds=1"], work / "cli.log")
    return {
        "variant": "resume with --set run.rounds=1 after 2 rounds",
        "exit": done.code,
        "one_sentence": done.one_sentence,
        "sentence": done.error(),
        "folder_unchanged": _files(run) == before,
    }


def study(work: Path, quick: bool = False, cli_sample: int = 12, seed: int = 0) -> dict[str, Any]:
    from fedpeft.runtime.local import run_local

    runs: dict[str, Any] = {}
    for mode, extra in (("sync", ()), ("async", ASYNC)):
        cfg = config(work / mode / "runs", *extra)
        reference = run_local(cfg).run_dir
        base = stopped_run(cfg, ROUNDS - 1)
        runs[mode] = (cfg, reference, base)
    cfg = runs["sync"][0]
    others = {
        "seed": stopped_run(config(work / "seed", "run.seed=1"), ROUNDS - 1),
        "lr": stopped_run(config(work / "lr", "client.lr=0.01"), ROUNDS - 1),
    }
    variants = [("sync", v) for v in [*_byte_variants(seed), *_content_variants()]]
    variants += [("async", v) for v in _async_variants()]
    if quick:
        picks = (
            "flip_middle round-000002.safetensors",
            "checkpoint of a run with another seed",
            "round 1 deleted whole",
        )
        variants = [(m, v) for m, v in variants if v.name in picks]
    rows = []
    for i, (mode, variant) in enumerate(variants):
        cfg, reference, base = runs[mode]
        row = {"mode": mode, **resume(cfg, variant, base, others, reference, work / f"v{i:03d}")}
        print(f"{mode} {variant.name}: {row['outcome']}", flush=True)
        rows.append(row)
    sample = _cli_sample(rows, cli_sample)
    cli_rows = []
    for i, name in enumerate(sample):
        mode, variant = next((m, v) for m, v in variants if v.name == name)
        _, reference, base = runs[mode]
        row = via_cli(variant, base, others, reference, work / f"cli{i:02d}")
        row["in_process"] = next(r["outcome"] for r in rows if r["variant"] == name)
        cli_rows.append(row)
        print(f"cli {name}: exit {cli_rows[-1]['exit']}", flush=True)
    if cli_sample:
        cli_rows.append(fewer_rounds(runs["sync"][2], work / "fewer"))
    return {
        "variants": len(rows),
        "counts": dict(Counter(r["outcome"] for r in rows)),
        "counts_forged": dict(Counter(r["outcome"] for r in rows if r["forged"])),
        "rows": rows,
        "cli": cli_rows,
    }


def _cli_sample(rows: list[dict[str, Any]], n: int) -> list[str]:
    """Up to ``n`` variants spread over the outcomes (every outcome at least once)."""
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r["outcome"], []).append(r["variant"])
    picked: list[str] = []
    while len(picked) < n and any(by.values()):
        for names in by.values():
            if names and len(picked) < n:
                picked.append(names.pop(len(names) // 2))
    return picked
