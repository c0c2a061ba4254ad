"""Per-case reports: ``slicer-xai report INPUT --model M --task T --audience A --out FILE.html``.

A self-contained HTML file (key slices embedded as PNG) with the prediction, the explanation the
audience's mode shows, uncertainty, robustness and sanity results when given, and provenance. No PDF:
the libraries that turn HTML into PDF need system packages (Pango, Cairo) or a browser.
"""

from .build import Report, build_report, choose_methods, choose_uncertainty, write_report
from .figures import RADIOLOGICAL_CAPTION, Outline, Overlay, key_slices_png
from .html import Export, Picture, render_html

__all__ = ["Report", "build_report", "write_report", "choose_methods", "choose_uncertainty", "key_slices_png",
           "Overlay", "Outline", "RADIOLOGICAL_CAPTION", "render_html", "Picture", "Export"]
