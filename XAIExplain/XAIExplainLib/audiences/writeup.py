"""What a writer produces: a headline, the review flag, and sections of sentences (and tables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

__all__ = ["Section", "Writeup", "format_ras", "format_percent"]


@dataclass
class Section:
    """A heading, paragraphs of plain sentences, and optionally a table (first row: the header)."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    table: Optional[list[list[str]]] = None


@dataclass
class Writeup:
    """One audience's words about one case."""

    audience: str
    title: str
    headline: str
    review: bool
    review_text: str
    sections: list[Section] = field(default_factory=list)

    def as_text(self) -> str:
        """Plain text (the Slicer module's summary panel, the command line)."""
        lines = [self.headline]
        if self.review_text:
            lines.append(self.review_text)
        for section in self.sections:
            lines += ["", section.heading]
            lines += section.paragraphs
            for row in section.table or []:
                lines.append("  " + " | ".join(row))
        return "\n".join(lines)

    def prose(self) -> str:
        """The sentences only (headline, flag, paragraphs), for readability measures."""
        return " ".join([self.headline, self.review_text, *(p for s in self.sections for p in s.paragraphs)]).strip()


def format_ras(point: Sequence[float]) -> str:
    """``RAS (12.5, -3.0, 40.0) mm``: x towards the patient's right, y anterior, z superior, as Slicer shows."""
    return "RAS ({}) mm".format(", ".join(f"{round(v, 1) + 0.0:.1f}" for v in point))


def format_percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"
