"""The ``[personalization]`` section: which part of the PEFT module each client keeps, and
how personal performance is measured on each client's held-out share
(``data.client_test_fraction``).

Modes (``client/personal.py`` has the client half, ``server/personal.py`` the server's):

- ``none``: every client uses the global adapter (a clustered run: its cluster's global);
- ``head``: the task head stays on the client (FedPer; Arivazhagan et al., 2019);
- ``lora_b``: LoRA's A is shared, B stays on the client (FedSA-LoRA; Guo et al., 2025);
- ``dual``: a small personal LoRA of rank ``rank`` trains beside the global one and stays
  (FedDPA; Yang et al., 2024);
- ``finetune``: ``finetune_steps`` local steps from the global after training (FT-after-FL).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from fedpeft.config.base import Section

PersonalMode = Literal["none", "head", "lora_b", "dual", "finetune"]


class PersonalizationConfig(Section):
    mode: PersonalMode = Field(
        "none",
        description="what each client keeps: none (the global); head (FedPer); lora_b (LoRA's "
        "B, FedSA-LoRA); dual (a personal LoRA beside the global, FedDPA); finetune "
        "(finetune_steps local steps from the global)",
    )
    eval_every: int = Field(
        0, ge=0, description="score every client on its held-out share every k rounds (0: last)"
    )
    rank: PositiveInt = Field(2, description="dual: the personal LoRA's rank")
    head_start: Literal["lda", "random"] = Field(
        "lda",
        description="head: a client's first personal head is the linear discriminant of its "
        "own training examples' features ('lda') or the method's seeded initialisation "
        "('random', FedPer as published)",
    )
    finetune_steps: PositiveInt = Field(10, description="finetune: local steps after training")
    baselines: bool = Field(
        False,
        description="at the last evaluation, also train and score each client's local-only "
        "model and its fully personalised one (the whole PEFT module fine-tuned from the global)",
    )
    local_epochs: PositiveInt | None = Field(
        None, description="local-only baseline's epochs (None: run.rounds × client.epochs)"
    )
    full_epochs: PositiveInt | None = Field(
        None, description="fully personalised baseline's epochs (None: as local_epochs)"
    )
