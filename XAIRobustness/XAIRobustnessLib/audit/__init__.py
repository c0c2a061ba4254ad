"""Cohort audit: every case of a cohort explained and checked, on Dask distributed (``slicer-xai audit``)."""

from .cohort import AuditCase, PacsSource, cases_from_folder, cases_from_manifest, cases_from_pacs
from .run import AuditSettings, run_audit
from .store import ResultStore

__all__ = ["AuditCase", "AuditSettings", "PacsSource", "ResultStore", "cases_from_folder", "cases_from_manifest",
           "cases_from_pacs", "run_audit"]
