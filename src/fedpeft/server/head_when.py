"""When the classifier head is set from the clients' class feature statistics, and whether
it can be at all: the resolved round-0 rule, the rounds that end with the whole head or only
its bias set again, and why a configuration cannot; the config-time refusals of these options,
and of others that act only on a classifier's head or logits, where the run has none. The
exchange itself is ``head_init``."""

from __future__ import annotations

from fedpeft.aggregation.registry import aggregator_names, aggregator_parts
from fedpeft.config import ExperimentConfig
from fedpeft.errors import FedpeftError
from fedpeft.server.instruct import task_kind

PERSONAL_PARTS = ("head", "lora_b")  # personalization modes whose tensors stay local


def head_rule(cfg: ExperimentConfig) -> str:
    """The configured rule, with ``auto`` resolved: ``lda``, unless differential privacy or
    secure aggregation is on — the statistics are sent as they are, neither noised nor
    masked, so such a run starts the head at random — or clients keep a personal part."""
    rule = cfg.server.head_init
    if rule != "auto":
        return rule
    private = cfg.privacy.mode != "none" or cfg.privacy.secure_aggregation
    return "random" if private or keeps_personal(cfg) else "lda"


def keeps_personal(cfg: ExperimentConfig) -> bool:
    """Whether clients keep a personal part (head, lora_b), which never travels — the
    round-0 request would send it; such a run starts the head at random."""
    return cfg.personalization.mode in PERSONAL_PARTS


def refresh_due(cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether round ``rnd`` ends with the head set again (``server.head_refresh``): only
    where round 0 set it from the statistics too."""
    return _at(cfg.server.head_refresh, cfg, rnd) and head_rule(cfg) != "random"


def bias_refresh_due(cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether round ``rnd`` ends with the head's bias moved (``server.bias_refresh``;
    ``auto``: after the last round, wherever the head could be set again at all). A round
    whose whole head is set again (``server.head_refresh``) sets its bias with it."""
    when = cfg.server.bias_refresh
    if when == "auto":
        when = "none" if head_refresh_blocker(cfg) else "last"
    return _at(when, cfg, rnd) and head_rule(cfg) != "random" and not refresh_due(cfg, rnd)


def _at(when: str, cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether ``every``/``last``/``none`` includes round ``rnd``."""
    return when == "every" or (when == "last" and rnd == cfg.run.rounds)


def head_refresh_blocker(cfg: ExperimentConfig) -> str:
    """Why the head cannot be set again from the clients' statistics after a round (""
    where it can)."""
    why = ""
    if cfg.server.mode == "async":
        why = "with `server.mode = 'async'` there is no round's aggregation to follow"
    elif task_kind(cfg) != "classify":
        why = f"the {task_kind(cfg)!r} task has no classifier head fed by pooled features"
    elif head_rule(cfg) == "random":
        why = (
            "the head starts at random here (`server.head_init`, differential privacy, secure "
            "aggregation or a personal head), so its statistics are not to be sent"
        )
    elif (
        cfg.server.aggregator in aggregator_names()
        and aggregator_parts(cfg.server.aggregator).partition is not None
    ):
        why = f"`server.aggregator = {cfg.server.aggregator!r}` keeps one global per cluster"
    return why


def check_classifier_options(cfg: ExperimentConfig) -> None:
    """``client.label_skew`` and an explicit ``server.head_init`` act on a classifier's class
    logits and head; another task has neither, and would train without them unsaid."""
    kind = task_kind(cfg)
    if kind == "classify":
        return
    for key, value, plain in (
        ("client.label_skew", cfg.client.label_skew, "none"),
        ("server.head_init", cfg.server.head_init, "auto"),
    ):
        if value not in (plain, "random"):
            raise FedpeftError(
                f"`{key} = {value!r}` acts on a classifier's class logits and head, which the "
                f"{kind!r} task has none of; set it to {plain!r}."
            )


def check_head_refresh(cfg: ExperimentConfig) -> None:
    """``server.head_refresh`` and an explicit ``server.bias_refresh`` run only where round 0
    sets a classifier's head from the statistics, after a synchronous round, on one global
    per method group."""
    asked = [k for k in ("head_refresh", "bias_refresh") if getattr(cfg.server, k) != "none"]
    why = head_refresh_blocker(cfg) if asked else ""
    if not why:
        return
    for key in ("head_refresh", "bias_refresh"):
        value = getattr(cfg.server, key)
        if value not in ("none", "auto"):
            raise FedpeftError(f"`server.{key} = {value!r}` cannot run: {why}; set it to 'none'.")
