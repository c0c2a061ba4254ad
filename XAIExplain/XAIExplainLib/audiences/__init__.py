"""Audience modes: what a radiologist, a researcher or a teaching session / patient is shown, and the
words written for each from the case's own results.

Each mode is a preset (:class:`AudiencePreset`: which maps, threshold, colours, views) plus a writer
(:class:`CaseFacts` -> :class:`Writeup`)::

    facts = build_case_facts(image, {"gradcam": result}, get_task("brain-lesion-triage"), model.spec, EVIDENCE_TOP_PERCENT)
    get_audience("radiologist").write(facts).as_text()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import XAIInputError
from .facts import CaseFacts, MethodFacts, UncertaintyFacts, build_case_facts
from .presets import EVIDENCE_TOP_PERCENT, RADIOLOGIST, RESEARCHER, TEACHING, AudiencePreset
from .radiologist import write_radiologist
from .researcher import facts_json, methods_csv, write_researcher
from .teaching import write_teaching
from .trust import Check, TrustEvidence, assess_trust, read_trust_evidence
from .writeup import Section, Writeup

__all__ = ["Audience", "AUDIENCES", "get_audience", "AudiencePreset", "CaseFacts", "MethodFacts",
           "UncertaintyFacts", "build_case_facts", "EVIDENCE_TOP_PERCENT", "Check", "TrustEvidence",
           "assess_trust", "read_trust_evidence", "Section", "Writeup", "methods_csv", "facts_json"]


@dataclass(frozen=True)
class Audience:
    """A mode: its display preset and its writer."""

    preset: AudiencePreset
    writer: Callable[[CaseFacts], Writeup]

    @property
    def key(self) -> str:
        return self.preset.key

    @property
    def title(self) -> str:
        return self.preset.title

    def write(self, facts: CaseFacts) -> Writeup:
        return self.writer(facts)


#: The modes by key, in the order users see them.
AUDIENCES: dict[str, Audience] = {
    a.key: a for a in (Audience(RADIOLOGIST, write_radiologist), Audience(RESEARCHER, write_researcher),
                       Audience(TEACHING, write_teaching))
}


def get_audience(key: str) -> Audience:
    """The mode ``key``; an unknown key is an :class:`XAIInputError` that lists the known ones."""
    if key not in AUDIENCES:
        raise XAIInputError(f"Unknown audience '{key}'; choose one of {', '.join(AUDIENCES)}.")
    return AUDIENCES[key]
