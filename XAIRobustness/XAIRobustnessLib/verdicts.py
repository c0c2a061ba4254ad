"""Which explanation method the bench's numbers support, and why the others fall short.

A method *meets the targets* on a model when, over the bench's cases with a lesion:

* its **pointing game** is at least :data:`POINTING_TARGET` (the map's peak inside the lesion on 9
  cases out of 10; Zhang et al., ECCV 2016);
* its **positive mass inside the lesion** is at least :data:`MASS_OVER_SHARE_TARGET` times the
  lesion's share of the body — an order of magnitude above what a map that knows nothing scores;
* it **passes the model-randomisation check** on every case the check ran on (Adebayo et al.,
  NeurIPS 2018): a map that survives randomising the weights does not explain the model.

Methods are ranked meeting-the-targets first, then passing the randomisation check, then by the share
of the map's mass inside the lesion (what a reader sees on the lesion rather than elsewhere), then by
AUPRC. The first that meets the
targets is the one the product recommends for the model's task; the task catalogue is checked
against this (:mod:`XAIExplainLib.tasks`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

__all__ = ["POINTING_TARGET", "MASS_OVER_SHARE_TARGET", "MethodVerdict", "method_verdict", "rank_methods",
           "recommended_method", "evidence_line"]

POINTING_TARGET = 0.90
MASS_OVER_SHARE_TARGET = 10.0


@dataclass(frozen=True)
class MethodVerdict:
    """Whether one method meets the bench's targets, and in words what it misses."""

    method: str
    meets_targets: bool
    failures: tuple[str, ...]
    passes_randomisation: Optional[bool]  # None: the check did not run

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures)}


def _mean(entry: Mapping[str, Any], column: str) -> float:
    value = entry.get(column)
    return float(value[0]) if value is not None else float("nan")


def method_verdict(method: str, entry: Mapping[str, Any]) -> MethodVerdict:
    """Check one method's summary entry (``bench.summarise``: per metric ``[mean, low, high]``)."""
    failures = []
    pointing = _mean(entry, "pointing_hit")
    if not pointing >= POINTING_TARGET:
        failures.append(f"pointing game {pointing:.2f} < {POINTING_TARGET:.2f}")
    mass, share = _mean(entry, "mass_in_lesion"), _mean(entry, "lesion_share")
    if not mass >= MASS_OVER_SHARE_TARGET * share:
        failures.append(f"mass in lesion {mass:.3f} < {MASS_OVER_SHARE_TARGET:g} x lesion share {share:.4f}")
    rate = entry.get("sanity_pass_rate")
    passes = None if rate is None else bool(rate == 1)
    if passes is None:
        failures.append("randomisation check not run")
    elif not passes:
        failures.append(f"fails the randomisation check ({rate:.0%} of {entry.get('sanity_n', 0)} cases pass)")
    return MethodVerdict(method, not failures, tuple(failures), passes)


def rank_methods(summary: Mapping[str, Mapping[str, Any]]) -> list[MethodVerdict]:
    """Every method's verdict, best first."""
    verdicts = [method_verdict(method, entry) for method, entry in summary.items()]

    def key(verdict: MethodVerdict) -> tuple[float, ...]:
        entry = summary[verdict.method]
        mass, auprc = _mean(entry, "mass_in_lesion"), _mean(entry, "auprc")
        return (-int(verdict.meets_targets), -int(bool(verdict.passes_randomisation)),
                -(mass if mass == mass else -1.0), -(auprc if auprc == auprc else -1.0))

    return sorted(verdicts, key=key)


def recommended_method(summary: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The best-ranked method that meets every target, or ``None`` when none does."""
    ranked = rank_methods(summary)
    return ranked[0].method if ranked and ranked[0].meets_targets else None


def evidence_line(entry: Mapping[str, Any]) -> str:
    """One sentence of measured evidence for a method, for the task catalogue and its readers."""
    rate, checked = entry.get("sanity_pass_rate"), entry.get("sanity_n", 0)
    sanity = ("randomisation check not run" if rate is None else
              f"passes the randomisation check (on {checked} of them)" if rate == 1 else
              f"FAILS the randomisation check ({round(rate * checked)} of the {checked} checked pass)")
    return (f"pointing game {_mean(entry, 'pointing_hit'):.2f}, "
            f"{_mean(entry, 'mass_in_lesion'):.0%} of the map's mass in the lesion "
            f"(the lesion is {_mean(entry, 'lesion_share'):.2%} of the body), "
            f"AUPRC {_mean(entry, 'auprc'):.2f}, {sanity}")
