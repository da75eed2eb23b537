"""Head initialisation from client feature statistics: before round 1 the clients send their
class feature sums ``s_{k,c}``, counts ``n_{k,c}`` and second moments ``Σ h hᵀ``
(``client/features.py``); the server adds them up and starts the classifier at a rule that
already separates the classes instead of at random.

``ncm`` — FedNCM (Legate et al., 2023, "Guiding The Last Layer in Federated Learning with
Pre-Trained Models", NeurIPS), the nearest-class-mean rule:

    μ_c = Σ_k s_{k,c} / Σ_k n_{k,c},   ḡ = Σ_c Σ_k s_{k,c} / Σ_c Σ_k n_{k,c}
    W_c = (μ_c − ḡ) / ‖μ_c − ḡ‖,       b_c = −W_c · ḡ

so the logit of class c is the length of the centred feature ``h − ḡ`` along the centred
class mean's direction (a head without bias uses ``W_c = μ_c / ‖μ_c‖``).

``lda`` — the linear discriminant (Fisher; Hastie et al., "The Elements of Statistical
Learning", §4.3) with the pooled within-class covariance shrunk towards a multiple of the
identity (Ledoit & Wolf, 2004, with a fixed weight λ):

    S = (Σ_x h hᵀ − Σ_c n_c μ_c μ_cᵀ) / N,   Σ_λ = (1 − λ) S + λ (tr S / H) I
    W_c = μ_cᵀ Σ_λ⁻¹,                         b_c = −½ μ_cᵀ Σ_λ⁻¹ μ_c

the Bayes rule for Gaussian classes with a shared covariance and a flat prior (a flat
prior matches the balanced logits that logit-adjusted training learns). ``tr S / H`` is
floored at 10⁻⁶ of the features' mean square ``tr(Σ_x h hᵀ) / (N H)``: where each class's
examples coincide, S = 0, Σ_λ would be singular and the rule is then the nearest class
mean's. Two changes that leave its decisions as they are:

- the rows are centred (``W_c − W̄``, ``b_c − b̄``; softmax does not change): the raw rows
  share a large common part, and ``W h + b`` in float32 then cancels catastrophically
  (logits of 10⁶ on a random tiny model, ties that flip with the batch size);
- the logits are divided by a temperature ``t = max(1, sd / max(1, ln C))``, where ``sd``
  is their standard deviation over the training features (from the same statistics:
  ``E_c[w_cᵀ Σ_all w_c + (w_cᵀ ḡ + b_c)²]``). The raw log-likelihood ratios are fitted to a
  few examples per class in H dimensions and badly over-confident (eval loss 5–600 on
  Banking77); spreading the logits over about ``ln C`` keeps the eval loss within 8 % of
  the best temperature's, summed over SST-2, TREC, AG News, Banking77 and 20 Newsgroups at
  200–2,000 examples (BENCHMARKS, "Head initialisation").

After training, ``bias_midpoints`` moves the bias alone (``server.bias_refresh``): the
class-mean logits under the trained adapter are ``M_{c,j} = w_j · μ_c + b_j`` (the head is
linear, so the same sums give them), and for every pair of held classes (a, b) the margin
``z_a − z_b``'s threshold is put halfway between class a's and class b's mean margins,

    t_ab = −½ [(M_aa − M_ab) + (M_ba − M_bb)],   δ_a = (1/P) Σ_b t_ab,   b ← b + δ

the least-squares fit of ``δ_a − δ_b = t_ab`` over the P held classes (``Σ δ = 0``; for two
classes exactly the midpoint; applying it twice moves nothing more). A federation whose
clients each hold one or two classes learns features that still rank the classes well
but a bias that swings with the last round's clients (SST-2, Dirichlet 0.1: AUC 0.84 at
accuracy 0.62); this puts the threshold back where the classes' own examples say.

Classes that no client holds keep their initial rows. Written here because the
statistics are federated sums; scikit-learn's estimators need the examples themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedpeft.types import AdapterState

HEAD_MODULES = ("classifier", "score")
STATS_SUM = "feature_stats/sum"
STATS_COUNT = "feature_stats/count"
STATS_SECOND = "feature_stats/second"
LDA_SHRINKAGE = 0.1
LDA_FLOOR = 1e-6  # tr S / H at least this share of the features' mean square h·h / H


def sum_stats(stats: Sequence[AdapterState]) -> AdapterState:
    """The clients' sums, counts and second moments added up (float64); class means only
    (sums and counts, ``server.bias_refresh``) where the first holds no second moment."""
    if not stats:
        raise ValueError("no feature statistics to add up")
    keys: tuple[str, ...] = (STATS_SUM, STATS_COUNT)
    keys += (STATS_SECOND,) if STATS_SECOND in stats[0] else ()
    c, h = stats[0][STATS_SUM].shape if STATS_SUM in stats[0] else (0, 0)
    want = {STATS_SUM: (c, h), STATS_COUNT: (c,), STATS_SECOND: (h, h)}
    for s in stats:
        if s.keys() != set(keys):
            raise ValueError(f"feature statistics should hold {', '.join(keys)}")
        if any(tuple(s[k].shape) != want[k] for k in keys):
            raise ValueError("feature statistics differ in shape")
    return {key: torch.stack([s[key].double() for s in stats]).sum(0) for key in keys}


def head_keys(state: AdapterState) -> tuple[str, str | None]:
    """The adapter-state keys of the classifier's weight and bias (None: no bias)."""
    weights = [k for k in state if k.endswith(".weight") and _in_head(k)]
    if len(weights) != 1:
        raise ValueError(f"expected one classifier weight in the adapter state, found {weights}")
    bias = weights[0].removesuffix(".weight") + ".bias"
    return weights[0], bias if bias in state else None


def _in_head(key: str) -> bool:
    return bool(set(key.split(".")) & set(HEAD_MODULES))


def lda_head(
    state: AdapterState,
    stats: AdapterState,
    shrinkage: float = LDA_SHRINKAGE,
    calibrate: bool = True,
) -> AdapterState:
    """``state`` with its classifier set to the shrunk linear discriminant of ``stats``
    (``calibrate=False``: at temperature 1, the raw log-likelihood ratios, centred)."""
    if not 0 < shrinkage <= 1:
        raise ValueError(f"`shrinkage` should be in (0, 1], got {shrinkage}")
    w_key, b_key = head_keys(state)
    weight = state[w_key]
    sums, counts, held = _class_sums(weight, stats)
    second = stats[STATS_SECOND].double()
    means = sums[held] / counts[held, None]
    scatter = second - (means.T * counts[held]) @ means
    cov = scatter / counts.sum()
    h = cov.shape[0]
    # tr S / H, floored: S is 0 where each class's examples coincide (a file of repeated rows)
    floor = LDA_FLOOR * float(torch.trace(second)) / float(counts.sum()) / h
    level = max(float(torch.trace(cov)) / h, floor, torch.finfo(cov.dtype).tiny)
    shrunk = (1 - shrinkage) * cov + shrinkage * level * torch.eye(h, dtype=cov.dtype)
    directions = torch.linalg.solve(shrunk, means.T).T  # μ_cᵀ Σ_λ⁻¹ (Σ_λ symmetric)
    biases = -0.5 * (directions * means).sum(1)
    directions, biases = directions - directions.mean(0), biases - biases.mean()
    centre = sums.sum(0) / counts.sum()
    spread = second / counts.sum() - torch.outer(centre, centre)
    sd = float(
        ((directions @ spread * directions).sum(1) + (directions @ centre + biases) ** 2)
        .mean()
        .clamp_min(0)
        .sqrt()
    )
    temperature = max(1.0, sd / max(1.0, math.log(weight.shape[0]))) if calibrate else 1.0
    out = dict(state)
    new_w = weight.double().clone()
    new_w[held] = directions / temperature
    out[w_key] = new_w.to(weight.dtype)
    if b_key is not None:
        new_b = state[b_key].double().clone()
        new_b[held] = biases / temperature
        out[b_key] = new_b.to(state[b_key].dtype)
    return out


def bias_midpoints(state: AdapterState, stats: AdapterState) -> AdapterState:
    """``state`` with only its classifier's bias moved to the pairwise-midpoint rule over
    the class-mean logits that ``stats`` give (module docstring); ``ValueError`` for a
    head without a bias."""
    w_key, b_key = head_keys(state)
    if b_key is None:
        raise ValueError("the classifier has no bias to move")
    weight = state[w_key]
    sums, counts, held = _class_sums(weight, stats)
    bias = state[b_key].double()
    means = sums[held] / counts[held, None]
    logits = means @ weight.double()[held].T + bias[held]  # [c, j]: class c's mean logit j
    own = logits.diagonal()
    pairs = -0.5 * ((own[:, None] - logits) + (logits.T - own[None, :]))  # t_ab
    new_b = bias.clone()
    new_b[held] = bias[held] + pairs.sum(1) / int(held.sum())
    return dict(state) | {b_key: new_b.to(state[b_key].dtype)}


def ncm_head(state: AdapterState, stats: AdapterState) -> AdapterState:
    """``state`` with its classifier set to the nearest-class-mean rule of ``stats``."""
    w_key, b_key = head_keys(state)
    weight = state[w_key]
    sums, counts, held = _class_sums(weight, stats)
    means = sums / counts.clamp_min(1)[:, None]
    out = dict(state)
    new_w = weight.double().clone()
    if b_key is None:
        new_w[held] = _unit(means[held])
        out[w_key] = new_w.to(weight.dtype)
        return out
    centre = sums.sum(0) / counts.sum()
    new_w[held] = _unit(means[held] - centre)
    new_b = state[b_key].double().clone()
    new_b[held] = -(new_w[held] @ centre)
    out[w_key], out[b_key] = new_w.to(weight.dtype), new_b.to(state[b_key].dtype)
    return out


def _class_sums(
    weight: torch.Tensor, stats: AdapterState
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the class feature sums and counts in float64, which classes any client holds), or
    ``ValueError`` where the sums do not fit the head ``weight`` or nobody holds an example."""
    sums, counts = stats[STATS_SUM].double(), stats[STATS_COUNT].double()
    if sums.shape != weight.shape:
        raise ValueError(f"statistics are {tuple(sums.shape)}, the head {tuple(weight.shape)}")
    held = counts > 0
    if not bool(held.any()):
        raise ValueError("no client holds any example")
    return sums, counts, held


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
