"""The server's global adapters, one per group, and each client's view of its group's.

A homogeneous run has one group, ``global``, whose state is exactly the clients' adapter.
A heterogeneous run (``allocation.enabled``) has a group per method family: its state is
the envelope of every configuration its clients trained (``aggregation.hetero``), each
client starts from its slice, and the group is evaluated at the envelope's own
configuration (for LoRA: the largest rank, the union of layers and targets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fedpeft.aggregation.hetero import client_view, extend_envelope
from fedpeft.allocation import Candidate
from fedpeft.server.assign import Assignment, options_json
from fedpeft.types import AdapterState


class Templates(Protocol):
    """What the server's model side offers: a configuration's fresh adapter."""

    def template(self, method: str, options: str) -> AdapterState: ...


class GroupBook:
    """Templates (cached: they are the configurations' initial states) and the candidates
    each group has served, from which the group's evaluation configuration follows."""

    def __init__(
        self, model: Templates, members: Mapping[str, Sequence[Candidate]] | None = None
    ) -> None:
        self.model = model
        self._templates: dict[tuple[str, str], AdapterState] = {}
        self.members: dict[str, dict[str, Candidate]] = {
            g: {c.name: c for c in m} for g, m in (members or {}).items()
        }

    def snapshot(self) -> dict[str, tuple[Candidate, ...]]:
        """The members as ``ServerState.members`` holds them."""
        return {g: tuple(m.values()) for g, m in sorted(self.members.items())}

    def template(self, candidate: Candidate) -> AdapterState:
        key = (candidate.method, options_json(candidate.options))
        if key not in self._templates:
            self._templates[key] = self.model.template(*key)
        return self._templates[key]

    def serve(
        self, adapters: dict[str, AdapterState], a: Assignment
    ) -> tuple[AdapterState, AdapterState]:
        """(the group's envelope grown to serve ``a`` if needed, the client's view of it)."""
        assert a.candidate is not None
        self.members.setdefault(a.group, {})[a.candidate.name] = a.candidate
        template = self.template(a.candidate)
        current = adapters.get(a.group)
        envelope = extend_envelope(current or {}, template, a.alpha) if a.alpha else current
        if envelope is None:
            envelope = {k: v.clone() for k, v in template.items()}
        return envelope, client_view(envelope, template, a.alpha)

    def eval_config(self, group: str) -> tuple[str, str, float | None]:
        """(method, options JSON, α) of the configuration that evaluates ``group``."""
        members = list(self.members.get(group, {}).values())
        if not members:
            return "", "{}", None
        first = members[0]
        if group != type(first.spec).envelope_group:  # one configuration, stored as trained
            return first.method, options_json(first.options), None
        ordered = sorted(members, key=lambda c: c.name)
        spec = type(first.spec).envelope([c.spec for c in ordered])
        options = spec.model_dump(mode="json", exclude_none=True)
        return first.method, options_json(options), spec.envelope_alpha()

    def eval_state(self, group: str, envelope: AdapterState) -> tuple[AdapterState, str, str]:
        """(state, method, options) to evaluate ``group``'s envelope with."""
        state, method, options, _, _ = self.eval_parts(group, envelope)
        return state, method, options

    def eval_parts(
        self, group: str, envelope: AdapterState
    ) -> tuple[AdapterState, str, str, AdapterState, float | None]:
        """``eval_state`` plus the envelope grown to the evaluation configuration and its α
        (what ``lift`` needs to bring a state of that configuration back)."""
        method, options, alpha = self.eval_config(group)
        if alpha is None:
            return envelope, method, options, envelope, None
        template = self.model.template(method, options)
        grown = extend_envelope(envelope, template, alpha)  # zero B̃ columns: same function
        return client_view(grown, template, alpha), method, options, grown, alpha
