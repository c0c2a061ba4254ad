"""Cohort audit: every case of a cohort explained and checked, on Dask distributed (``slicer-xai audit``)."""

from .cohort import AuditCase, cases_from_folder, cases_from_manifest
from .run import AuditSettings, run_audit
from .store import ResultStore

__all__ = ["AuditCase", "AuditSettings", "ResultStore", "cases_from_folder", "cases_from_manifest", "run_audit"]
