"""DICOM in and out: a volume written as an image series, and an explanation written as standard objects
(Parametric Map, SEG, TID 1500 SR) that reference the series it was computed on."""

from .export import (RESEARCH_USE, DicomExport, order_like_image, read_source_series, reference_series,
                     write_dicom_results)
from .series import SeriesIdentity, write_image_series

__all__ = ["RESEARCH_USE", "DicomExport", "SeriesIdentity", "order_like_image", "read_source_series",
           "reference_series", "write_dicom_results", "write_image_series"]
