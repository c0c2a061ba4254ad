"""Teaching / patient mode: short sentences in everyday words; what the coloured patch is and is not;
how sure the program is; and the limits ("a computer program's estimate; a doctor decides").

Written to read at school-grade 8 or below (Flesch-Kincaid), which the tests measure.
"""

from __future__ import annotations

from .facts import CaseFacts
from .presets import LESION_OUTLINE, TEACHING
from .writeup import Section, Writeup

__all__ = ["write_teaching", "size_comparison"]

#: Everyday things of about a given volume (mL), smallest first, for "about the size of ...".
_SIZES = ((0.2, "a pea"), (1.5, "a chickpea"), (5.0, "a grape"), (15.0, "a walnut"), (60.0, "a plum"),
          (200.0, "an orange"))


def write_teaching(facts: CaseFacts) -> Writeup:
    """The plain-language account of ``facts``."""
    words = facts.task.plain_words
    finding, part = facts.task.finding, words["body_part"]
    return Writeup(
        audience=TEACHING.key,
        title=f"What the computer saw in this {words['scan']}",
        headline=_answer(facts)[0] + " A doctor decides.",
        review=facts.review,
        review_text="A doctor should take a closer look at this one." if facts.review else "",
        sections=[
            Section("The result", [f"A computer program looked at this {words['scan']} of the {part}. "
                                   f"It was made to look for a {finding}. A {finding} is {words['finding_means']}.",
                                   *_answer(facts)]),
            Section("What the coloured patch means", _patch(facts)),
            Section("How sure is the program?", _sureness(facts)),
            Section("Limits", _limits(facts)),
        ],
    )


def size_comparison(volume_ml: float) -> str:
    """An everyday object of about ``volume_ml`` millilitres."""
    return next((name for limit, name in _SIZES if volume_ml <= limit), "a large fruit")


def _answer(facts: CaseFacts) -> list[str]:
    finding = facts.task.finding
    out_of_100 = round(100 * float(facts.prediction.get("confidence", 0.0)))
    if facts.prediction.get("task") == "segmentation":
        if not facts.finding_present:
            return [f"The program did not find a {finding}."]
        volume = facts.prediction.get("volumes_ml", {}).get(facts.prediction.get("predicted_label"), 0.0)
        return [f"The program thinks there is a {finding}. It drew a line around it.",
                f"It is about the size of {size_comparison(volume)}."]
    if facts.finding_present:
        answer = f"The program thinks there is a {finding}."
    else:
        answer = f"The program thinks there is no {finding}."
    return [answer, f"Its own score for this answer is {out_of_100} out of 100. A high score does not make it right."]


def _patch(facts: CaseFacts) -> list[str]:
    finding, part = facts.task.finding, facts.task.plain_words["body_part"]
    lines = ["The orange patch in the pictures shows the part of the scan that counted most for the answer.",
             f"Here it is {_where(facts.location, part)}."]
    region = facts.main.region
    if region.peak_in_lesion is not None:
        lines.append(f"The {LESION_OUTLINE['name']} line shows where the {finding} really is.")
        lines.append("The patch lands on it." if region.peak_in_lesion else
                     "The patch misses it. So the program may have used the wrong clue.")
    lines += [f"The patch is not a picture of the {finding}. It shows where the program looked.",
              "It does not show how serious anything is.",
              "The pictures are shown the way doctors view scans. The patient's right side is on the left."]
    return lines


def _sureness(facts: CaseFacts) -> list[str]:
    uncertainty = facts.uncertainty
    if not uncertainty.estimated:
        lines = ["We did not test how sure the program is this time."]
    else:
        lines = [f"We asked the program again {uncertainty.samples} times. Each time the scan or the program was "
                 "changed a tiny bit."]
        lines.append("The answers changed quite a lot. So this result is not certain." if uncertainty.variable else
                     "The answers stayed about the same each time.")
    if uncertainty.low_confidence:
        lines.append("Its score is low. So the program itself is unsure.")
    failed = [c for c in facts.checks if c.status == "failed"]
    if failed:
        lines.append("A test of the coloured patch did not pass. So the patch may not show the true reason.")
    elif facts.checks_run:
        lines.append("Tests of the coloured patch passed. It does follow what the program used.")
    return lines


def _limits(facts: CaseFacts) -> list[str]:
    lines = ["This is a computer program's estimate. It can be wrong.",
             "A doctor looks at the whole scan and decides."]
    if "synthetic" in str(facts.model.get("data_source") or ""):
        lines.append("This program learned from made-up practice scans, not from real patients.")
    lines.append("Do not use this page alone to make a choice about care.")
    return lines


def _where(location: dict[str, str], part: str) -> str:
    side = {"left": f"on the left side of the {part}", "right": f"on the right side of the {part}",
            "middle": f"near the middle of the {part}"}[location.get("side", "middle")]
    extras = [{"front": "towards the front", "back": "towards the back"}.get(location.get("front_back", "")),
              {"upper": "in the upper part", "lower": "in the lower part"}.get(location.get("up_down", ""))]
    extras = [e for e in extras if e]
    return side + (", " + " and ".join(extras) if extras else "")
