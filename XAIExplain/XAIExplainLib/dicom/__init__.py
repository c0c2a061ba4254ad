"""DICOM in and out: a volume written as a standard image series (the first step of the PACS round trip)."""

from .series import SeriesIdentity, write_image_series

__all__ = ["SeriesIdentity", "write_image_series"]
