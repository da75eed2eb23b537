"""Predicted cost of one PEFT candidate on one client: peak memory, time and bytes a round.

Everything is closed form over the model's ``Architecture`` and the method's spec, so the
server can price every candidate for every client without building a model. Every term a
method contributes (its parameters, FLOPs, the tokens attention sees, how deep backprop
goes) is asked of its spec (``fedpeft.peft.MethodSpec``). The constants that depend on the
machine and framework sit in ``Calibration``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from fedpeft.data.partition import DataProfile
from fedpeft.errors import FedpeftError
from fedpeft.peft import Architecture, MethodSpec
from fedpeft.profiling import MiB, ResourceProfile

Optimizer = Literal["adamw", "sgd"]
STATE_BYTES: dict[str, int] = {"adamw": 8, "sgd": 0}  # optimizer state per fp32 parameter
FLOAT_BYTES = 4  # weights, gradients and activations are float32


def check(field: str, ok: bool, expected: str, got: object) -> None:
    """Raises ``FedpeftError`` naming the field, what was expected and what was received."""
    if not ok:
        raise FedpeftError(f"`{field}` must be {expected}, got {got!r}.")


@dataclass(frozen=True)
class Calibration:
    """Machine- and framework-dependent constants, fitted for one machine (refit for others).

    The defaults come from ``benchmarks/cost_model_check.py`` (2026-11-23; 2-core AMD EPYC,
    torch 2.13 CPU, 2 threads): one AdamW step of each of the 9 methods on all-MiniLM-L6-v2
    at batch 32 × length 64 (``benchmarks/results/methods.json``). With them, memory is
    within ±10% of the process's peak RSS for every method, and step time within ±8% for
    every method but full fine-tuning (−45%: AdamW's update and the dense embedding
    gradient cost time per parameter, which the FLOP count leaves out).

    - ``framework_bytes``: resident memory of Python + torch + transformers (with the data
      and tokenizer) before the model: observed as the RSS after loading minus the weights.
    - ``activation_scale``: multiplies the activation formula (attention kernels that do not
      keep the probabilities, e.g. fused SDPA, store less; allocator slack stores more).
      Fitted by least squares on peak RSS: 1.39 (eager CPU attention, adapter internals
      and allocator slack keep more than the formula).
    - ``flops_efficiency``: training throughput / matmul-probe FLOP/s (elementwise ops,
      softmax, LayerNorm and autograd run far below matmul speed). Fitted: training ran at
      90.6 GFLOP/s against ``measure_flops(seconds=1.0)`` ≈ 198 GFLOP/s at 2 threads (the
      median of 5 reads on the idle machine; single reads vary by ±4%).
    - ``grad_input_factor``: FLOPs of the gradients with respect to a block's inputs per
      forward FLOP of the block (≈1: one matmul per forward matmul, Kaplan et al., 2020).
      Fitted: 0.62 (we think because the forward's dropout sampling, GELU and softmax run
      slower than their backward, which the flat efficiency cannot express).
    - ``grad_weight_factor``: the same for the gradients of trained weights (≈1). Kept at 1:
      only full fine-tuning measures it, and its misfit is not in FLOPs (see above).
    """

    # Fitted by benchmarks/cost_model_check.py on 2026-11-23 (2-core AMD EPYC, torch 2.13
    # CPU); the assumptions before were 384 MiB, 1.0, 0.5, 1.0, 1.0.
    framework_bytes: int = 341 * MiB
    activation_scale: float = 1.39
    flops_efficiency: float = 0.46
    grad_input_factor: float = 0.62
    grad_weight_factor: float = 1.0  # not fitted (theory): see above

    def __post_init__(self) -> None:
        for name in ("framework_bytes", "grad_input_factor", "grad_weight_factor"):
            value = getattr(self, name)
            check(f"calibration.{name}", value >= 0, ">= 0", value)
        scale, eff = self.activation_scale, self.flops_efficiency
        check("calibration.activation_scale", scale > 0, "> 0", scale)
        check("calibration.flops_efficiency", 0 < eff <= 1, "in (0, 1]", eff)


@dataclass(frozen=True)
class Workload:
    """One client's round: ``steps`` optimizer steps of ``batch_size`` examples, padded to at
    most ``seq_len`` tokens (sets peak memory) and ``mean_seq_len`` on average (sets time)."""

    batch_size: int
    seq_len: int
    steps: int
    mean_seq_len: int

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "steps", "mean_seq_len"):
            value = getattr(self, name)
            check(f"workload.{name}", isinstance(value, int) and value >= 1, "an int >= 1", value)
        check(
            "workload.mean_seq_len",
            self.mean_seq_len <= self.seq_len,
            "<= seq_len",
            self.mean_seq_len,
        )


def client_workload(
    data: DataProfile, batch_size: int, max_length: int, epochs: int = 1, steps: int | None = None
) -> Workload:
    """``steps`` if given, else ``epochs·⌈n/batch_size⌉``; the mean padded length is the
    data's mean length, capped at ``max_length`` (dynamic padding makes it a lower bound)."""
    n_steps = steps or epochs * max(1, math.ceil(data.num_examples / batch_size))
    mean = data.mean_length if math.isfinite(data.mean_length) else max_length
    mean_len = min(max_length, max(1, math.ceil(mean)))
    return Workload(batch_size, max_length, n_steps, mean_len)


def backprop_blocks(arch: Architecture, spec: MethodSpec) -> int:
    """Transformer blocks that backprop goes through: every block at or above the lowest one
    with trainable parameters (``MethodSpec.lowest_trained_block``); none when only the
    task head trains."""
    lowest = spec.lowest_trained_block(arch)
    return 0 if lowest is None else arch.layers - lowest


def ffn_width(arch: Architecture) -> int:
    """The feed-forward (intermediate) width ``f``: the widest projection of a block."""
    return max(lin.d_out for lin in arch.linears if lin.layer is not None)


def block_activation_bytes(arch: Architecture, batch: int, tokens: int, keys: int) -> int:
    """Bytes one block keeps for backward in float32 with dropout (Korthikanti et al., 2022,
    §4.1, re-derived for 4-byte values, 1-byte dropout masks and any width ``f``)::

        A = b·s·(34·h + 8·f + 9·a·s_k)

    ``34h``: the block input, Q, K, V, the attention context, the LayerNorm inputs and
    outputs (8 values of ``h`` × 4 bytes) and two dropout masks; ``8f``: the feed-forward
    pre- and post-activation; ``9·a·s_k``: the softmax output and its dropout (4 + 4 bytes)
    and mask (1 byte) per head and key.
    """
    h, f, a = arch.hidden, ffn_width(arch), arch.heads
    return batch * tokens * (34 * h + 8 * f + 9 * a * keys)


def activation_bytes(
    arch: Architecture, spec: MethodSpec, batch: int, seq_len: int, scale: float = 1.0
) -> int:
    """``(n_bp + 1)·A``: the blocks backprop goes through, plus one block of transient
    forward/backward buffers. Adapter-internal activations (LoRA's ``r``, a bottleneck's
    ``size`` values per token) are second order and left out."""
    tokens, keys = spec.token_counts(seq_len)
    blocks = backprop_blocks(arch, spec) + 1
    return math.ceil(scale * blocks * block_activation_bytes(arch, batch, tokens, keys))


def parameter_bytes(arch: Architecture, spec: MethodSpec, optimizer: Optimizer = "adamw") -> int:
    """``4·(P + P_new) + (4 + s_opt)·T``: base and added weights, then a gradient and the
    optimizer state (AdamW: two moments, 8 bytes) for each of the ``T`` trainable ones."""
    check("optimizer", optimizer in STATE_BYTES, f"one of {sorted(STATE_BYTES)}", optimizer)
    weights = FLOAT_BYTES * (arch.total_params + spec.added_params(arch))
    return weights + (FLOAT_BYTES + STATE_BYTES[optimizer]) * spec.trainable_params(arch)


def peak_memory(
    arch: Architecture,
    spec: MethodSpec,
    batch_size: int,
    seq_len: int,
    optimizer: Optimizer = "adamw",
    calibration: Calibration | None = None,
) -> int:
    """Predicted peak training memory: ``M = M_framework + parameter_bytes + s_act·A_total``."""
    cal = calibration or Calibration()
    acts = activation_bytes(arch, spec, batch_size, seq_len, cal.activation_scale)
    return cal.framework_bytes + parameter_bytes(arch, spec, optimizer) + acts


def forward_flops(arch: Architecture, spec: MethodSpec, seq_len: int) -> int:
    """Forward FLOPs for one example: ``s·F_token + F_attention(s) + F_method(s)``."""
    base = seq_len * arch.per_token_flops() + arch.attention_flops(seq_len)
    return base + spec.extra_flops(arch, seq_len)


def step_flops(
    arch: Architecture,
    spec: MethodSpec,
    batch_size: int,
    seq_len: int,
    calibration: Calibration | None = None,
) -> float:
    """FLOPs of one training step, ``b·(F + k_in·F_bp + k_w·F_w) + F_batch``:

    - ``F`` = ``forward_flops`` with the method's training FLOPs per example
      (``MethodSpec.train_flops``);
    - ``F_bp = (n_bp/L)·F_blocks + F_method``: the forward FLOPs of what backprop goes
      through (input gradients cost about as much again);
    - ``F_w``: forward FLOPs of the trained weights — every block backprop reaches for full
      fine-tuning (``MethodSpec.trains_base``), the method's own ``F_method`` otherwise
      (frozen weights get no gradient);
    - ``F_batch``: what the method runs once per step, without gradient
      (``MethodSpec.batch_flops``, e.g. DoRA's weight norm).

    With ``k_in = k_w = 1``, full fine-tuning costs the usual 3× forward, a method on a frozen
    base ≈ 2× through the blocks it reaches, head-only training 1×.
    """
    cal = calibration or Calibration()
    blocks = seq_len * arch.per_token_flops() + arch.attention_flops(seq_len)
    method = spec.train_flops(arch, seq_len)
    n_bp = backprop_blocks(arch, spec)
    through = n_bp / arch.layers * blocks + method if n_bp else 0.0
    trained = through if spec.trains_base else method
    forward = blocks + method
    per_example = forward + cal.grad_input_factor * through + cal.grad_weight_factor * trained
    return batch_size * per_example + spec.batch_flops(arch)


def step_seconds(
    arch: Architecture,
    spec: MethodSpec,
    batch_size: int,
    seq_len: int,
    flops_per_s: float,
    calibration: Calibration | None = None,
) -> float:
    """``t_step = step_flops / (η·FLOP/s)`` with ``η`` the calibrated efficiency."""
    cal = calibration or Calibration()
    return step_flops(arch, spec, batch_size, seq_len, cal) / (cal.flops_efficiency * flops_per_s)


def update_bytes(arch: Architecture, spec: MethodSpec, bits_per_param: int = 32) -> int:
    """Bytes of one update at ``bits_per_param`` (``⌈T·bits/8⌉``; whole bytes use the
    method's own ``update_bytes``)."""
    check("bits_per_param", 1 <= bits_per_param <= 32, "in [1, 32]", bits_per_param)
    if bits_per_param % 8 == 0:
        return spec.update_bytes(arch, bits_per_param // 8)
    return math.ceil(spec.trainable_params(arch) * bits_per_param / 8)


@dataclass(frozen=True)
class Cost:
    """Predicted cost of one round for one client and candidate."""

    memory_bytes: int
    step_seconds: float
    steps: int
    bytes_down: int
    bytes_up: int
    transfer_seconds: float

    @property
    def compute_seconds(self) -> float:
        return self.steps * self.step_seconds

    @property
    def round_seconds(self) -> float:
        """``T = S·t_step + 8·B_down/bw_down + 8·B_up/bw_up``."""
        return self.compute_seconds + self.transfer_seconds

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"round_seconds": self.round_seconds}


def predict_cost(
    arch: Architecture,
    spec: MethodSpec,
    workload: Workload,
    profile: ResourceProfile,
    bits_down: int = 32,
    bits_up: int = 32,
    optimizer: Optimizer = "adamw",
    calibration: Calibration | None = None,
) -> Cost:
    """Memory at the longest batch, time at the mean length, bytes both ways."""
    cal = calibration or Calibration()
    memory = peak_memory(arch, spec, workload.batch_size, workload.seq_len, optimizer, cal)
    step = step_seconds(
        arch, spec, workload.batch_size, workload.mean_seq_len, profile.flops_per_s, cal
    )
    down, up = update_bytes(arch, spec, bits_down), update_bytes(arch, spec, bits_up)
    transfer = 8 * down / profile.download_bps + 8 * up / profile.upload_bps
    return Cost(memory, step, workload.steps, down, up, transfer)
