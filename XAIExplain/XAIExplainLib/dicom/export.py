"""An explanation written as standard DICOM objects that reference the series it was computed on.

* **Parametric Map** (PS3.3 A.75) per float map (saliency, uncertainty): 32-bit float frames, one per source
  slice, with a Real World Value Mapping that says what the values mean (DCM 130404 "Saliency").
* **Segmentation** (PS3.3 A.51): the review regions (:mod:`XAIExplainLib.review`) and, for segmentation
  models, the predicted structures; each segment names the algorithm (model, version, method).
* **Comprehensive 3D SR** holding a TID 1500 Measurement Report: the finding and its probability, the
  uncertainty measures, the strongest evidence as a point on the source slice it lies on, the review region
  (referencing the SEG segment), the applicability and trust checks with their status, and the algorithm
  identification with the weights' SHA-256. No local file path is written.

Objects are built with highdicom (Herrmann et al., "Highdicom: a Python library for standardized encoding of
image annotations and machine learning model outputs in pathology and radiology", J Digit Imaging 2022). All
go into the source's study, each in a new series with fresh UIDs, and their series descriptions say they are
for research use only. Patient and study attributes are copied from the source by highdicom; nothing else
identifying is added.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .. import __version__
from ..audiences.trust import FAILED, NOT_RUN, PASSED
from ..errors import XAIInputError
from ..imageio import dicom_series_files
from ..review import DEFAULT_REVIEW_PERCENTILE, review_regions
from .series import write_image_series

__all__ = ["RESEARCH_USE", "PRIVATE_SCHEME", "DicomExport", "order_like_image", "read_source_series",
           "reference_series", "write_dicom_results"]

RESEARCH_USE = "research use - not for clinical use"
#: Private coding scheme for concepts no standard code exists for (PS3.16 8.2: "99" prefix).
PRIVATE_SCHEME = "99SLICERXAI"
MANUFACTURER = "SlicerXAI"
_SOFTWARE = f"slicer-xai {__version__}"
_NO_UNITS = codes.UCUM.NoUnits
_LESION_WORDS = ("lesion", "tumour", "tumor", "nodule", "metasta", "mass")
_STATUS = {  # check status (audiences.trust) -> coded value
    PASSED: ("PASS", "Passed"), FAILED: ("FAIL", "Failed"), NOT_RUN: ("NOTRUN", "Not run"),
}
_POSITION_TOLERANCE_MM = 1e-2


@dataclass(frozen=True)
class DicomExport:
    """What :func:`write_dicom_results` wrote: file name per object role, and the study it joined."""

    files: dict[str, Path]
    study_uid: str
    series_uids: dict[str, str]
    #: Whether the objects were also added to a DICOM database (Slicer's), by whoever wrote them there.
    imported: bool = False


def read_source_series(folder: str | os.PathLike) -> list[Dataset]:
    """The headers of the DICOM series in ``folder``, in the order slice ``k`` of its image is file ``k``."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in dicom_series_files(folder)]


def order_like_image(headers: Sequence[Dataset], image: sitk.Image) -> list[Dataset]:
    """``headers`` (one per slice, any order: e.g. a DICOM database's files of a volume) in the order of
    ``image``'s slices: header ``k`` is the one whose Image Position (Patient) is slice ``k``'s first voxel."""
    columns, rows, slices = image.GetSize()
    if len(headers) != slices:
        raise XAIInputError(f"The volume has {slices} slices but its DICOM series {len(headers)} images.")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    ordered = []
    for k in range(slices):
        distance = np.abs(positions - np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))).max(axis=1)
        best = int(np.argmin(distance))
        if distance[best] > _POSITION_TOLERANCE_MM:
            raise XAIInputError("The volume's slices are not where its DICOM series' images are (was it resampled "
                                "or cropped?); results can only reference the series it was read from unchanged.")
        ordered.append(headers[best])
    return ordered


def reference_series(image: sitk.Image, headers: Optional[Sequence[Dataset]],
                     folder: str | os.PathLike) -> list[Dataset]:
    """The headers that results computed on ``image`` will reference: ``headers`` (the series it was read
    from) in the order of its slices or, for an image that did not come from DICOM (``headers`` None), those
    of the image written as a new series into ``folder``."""
    if headers is None:
        write_image_series(image, folder)
        return read_source_series(folder)
    return order_like_image(headers, image)


def write_dicom_results(
    result,
    source: Sequence[Dataset],
    folder: str | os.PathLike,
    checks: Sequence = (),
    review_percentile: float = DEFAULT_REVIEW_PERCENTILE,
) -> DicomExport:
    """Write ``result`` (an :class:`~XAIExplainLib.pipeline.ExplanationResult` computed on ``source``) into
    ``folder`` as Parametric Maps, SEGs and a TID 1500 SR.

    ``checks`` are trust checks (:class:`~XAIExplainLib.audiences.trust.Check`) to record besides the
    applicability checks the result carries. Raises :class:`XAIInputError` when the result is not on the
    source series' grid.
    """
    source = list(source)
    _check_same_grid(result.saliency, source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = result.provenance["model"]
    method = result.explanation["method"]
    algorithm = _AlgorithmInfo(model, method)
    objects: dict[str, Dataset] = {}
    series_number = max(int(getattr(ds, "SeriesNumber", 0) or 0) for ds in source) + 100
    review_volume_mm3 = None

    objects["saliency"] = _parametric_map(
        source, result.saliency, algorithm, series_number, label="SALIENCY",
        meaning=result.explanation.get("value_meaning", "saliency"),
        description=f"XAI saliency {method}", quantity=codes.DCM.Saliency)
    if result.uncertainty is not None:
        objects["uncertainty"] = _parametric_map(
            source, result.uncertainty, algorithm, series_number + 1, label="UNCERTAINTY",
            meaning=result.uncertainty_info.get("map", "uncertainty"),
            description=f"XAI uncertainty {result.uncertainty_info.get('method', '')}",
            quantity=codes.DCM.StandardDeviation)
        mask, threshold = review_regions(result.uncertainty, review_percentile)
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        if voxels:
            review_volume_mm3 = voxels * float(np.prod(mask.GetSpacing()))
            objects["review"] = _segmentation(
                source, sitk.GetArrayFromImage(mask), algorithm, series_number + 2, "XAI review regions",
                [(f"Review region (uncertainty > P{review_percentile:g})", codes.SCT.SpatialAndRelationalConcept,
                  codes.DCM.RegionInSpace)])
    if result.segmentation is not None:
        labels, segments = _predicted_segments(result.segmentation, model["class_names"])
        if segments:
            objects["segmentation"] = _segmentation(
                source, labels, algorithm, series_number + 3, "XAI predicted segmentation", segments)
    objects["report"] = _report(result, source, objects, algorithm, checks, series_number + 4, review_volume_mm3)

    files = {}
    for role, dataset in objects.items():
        path = folder / f"{role}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files[role] = path
    return DicomExport(files=files, study_uid=str(source[0].StudyInstanceUID),
                       series_uids={role: str(ds.SeriesInstanceUID) for role, ds in objects.items()})


class _AlgorithmInfo:
    """The model and method as DICOM identifies an algorithm (SEG's sequence, SR's TID 4019)."""

    def __init__(self, model: dict, method: str):
        self.name = _lo(model.get("name") or "model")
        self.version = _lo(model.get("version") or "unknown")
        self.parameters = {"method": method, "model": str(model.get("id", "")),
                           "weights_sha256": str(model.get("sha256") or "unknown")}
        self.serial = str(model.get("sha256") or "unknown")[:16]

    def sequence(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=codes.cid7162.ArtificialIntelligence, version=self.version,
            source=MANUFACTURER, parameters=self.parameters)

    def template(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version,
            parameters=[f"{key}={value}" for key, value in self.parameters.items()])

    def equipment(self) -> dict:
        return {"manufacturer": MANUFACTURER, "manufacturer_model_name": self.name,
                "software_versions": _SOFTWARE, "device_serial_number": self.serial}


def _parametric_map(source, image: sitk.Image, algorithm: _AlgorithmInfo, series_number: int, *, label: str,
                    meaning: str, description: str, quantity) -> Dataset:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = float(array.min()), float(array.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16], lut_explanation=_lo(meaning), unit=_NO_UNITS, value_range=(low, high),
        slope=1.0, intercept=0.0, quantity_definition=quantity)
    # LINEAR_EXACT: the window of a 0..1 map is narrower than 1, which plain LINEAR forbids (PS3.3 C.11.2.1.2).
    window = hd.VOILUTTransformation(window_center=(low + high) / 2, window_width=max(high - low, 1e-6),
                                     voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)
    parametric_map = hd.pm.ParametricMap(
        source_images=source, pixel_array=array, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, **algorithm.equipment(),
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[window], content_label=label[:16], content_description=_lo(meaning), content_creator_name=None,
        series_description=_series_description(description))
    # General Series' Laterality (type 2C): the source's when it has one, else present and empty (unknown).
    parametric_map.Laterality = getattr(source[0], "Laterality", "")
    return parametric_map


def _segmentation(source, labels: np.ndarray, algorithm: _AlgorithmInfo, series_number: int, description: str,
                  segments: Sequence[tuple]) -> Dataset:
    """``labels`` holds 0 and the segment numbers 1..len(segments), one slice per source image."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=_lo(label), segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.sequence(), tracking_uid=generate_uid(), tracking_id=_lo(label))
        for number, (label, category, kind) in enumerate(segments, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=source, pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, **algorithm.equipment(), series_description=_series_description(description))


def _predicted_segments(segmentation: sitk.Image, class_names: Sequence[str]) -> tuple[np.ndarray, list[tuple]]:
    """The predicted classes present (background 0 left out), renumbered 1..N as SEG segments."""
    array = sitk.GetArrayFromImage(segmentation)
    labels = np.zeros(array.shape, dtype=np.uint8)
    segments = []
    for index in (int(v) for v in np.unique(array) if v > 0):
        name = class_names[index] if index < len(class_names) else f"class {index}"
        segments.append((name, *_structure_codes(name)))
        labels[array == index] = len(segments)
    return labels, segments


def _structure_codes(name: str) -> tuple:
    """(category, type) of a predicted structure: SNOMED's lesion where the name says so, else a private code."""
    if any(word in name.lower() for word in _LESION_WORDS):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    return codes.SCT.Tissue, _private(f"CLASS-{name}", name)


def _report(result, source, objects: dict, algorithm: _AlgorithmInfo, checks, series_number: int,
            review_volume_mm3: Optional[float]) -> Dataset:
    prediction, explanation = result.prediction, result.explanation
    finding = _finding_code(prediction)
    template = algorithm.template()
    groups = [_evidence_group(result, source, finding, template)]
    if result.uncertainty_info.get("method", "none") != "none":
        groups.append(_uncertainty_group(result.uncertainty_info, template))
    if review_volume_mm3 is not None:
        groups.append(_review_group(objects["review"], source, template, review_volume_mm3))
    groups.append(_checks_group(result.applicability.get("checks", []), checks, template))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm.parameters["weights_sha256"], algorithm.name]),
            name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=algorithm.name))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.Imaging, imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport)
    evidence = [*source, *objects.values()]
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False,
        series_description=_series_description(f"XAI report {explanation['method']}"))
    scheme = Dataset()  # PS3.3 C.12.1.1.3: a private coding scheme is declared by whoever uses it
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "SlicerXAI explanation concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    document.CodingSchemeIdentificationSequence = [scheme]
    return document


def _finding_code(prediction: dict):
    label = str(prediction.get("predicted_label") or prediction.get("target") or "finding")
    if any(word in label.lower() for word in _LESION_WORDS):
        return codes.SCT.Lesion
    return _private(f"CLASS-{label}", label)


def _evidence_group(result, source, finding, template):
    """TID 1410: the strongest evidence as a point on the source slice that holds it."""
    i, j, k = (int(v) for v in result.explanation["statistics"]["peak_ijk"])
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.array([[i + 0.5, j + 0.5]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source[k].SOPClassUID, referenced_sop_instance_uid=source[k].SOPInstanceUID))
    measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(result.prediction["confidence"]),
                                      unit=_NO_UNITS, algorithm_id=template)]
    peak = result.explanation["statistics"].get("max")
    if peak is not None:
        measurements.append(hd.sr.Measurement(name=codes.DCM.Saliency, value=float(peak), unit=_NO_UNITS,
                                              algorithm_id=template))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Strongest evidence"),
        referenced_region=region, finding_type=finding,
        method=_private(f"METHOD-{result.explanation['method']}", result.explanation.get("method_name", "")),
        algorithm_id=template, measurements=measurements)


_UNCERTAINTY_MEASURES = (  # key in uncertainty_info -> (code value, meaning)
    ("predicted_class_std", "UNC-STD", "Spread of the predicted class probability"),
    ("predictive_entropy", "UNC-ENTROPY", "Predictive entropy"),
    ("mutual_information", "UNC-MI", "Mutual information (BALD)"),
    ("agreement", "UNC-AGREEMENT", "Agreement of the samples with the prediction"),
)


def _uncertainty_group(info: dict, template):
    measurements = [hd.sr.Measurement(name=_private(code, meaning), value=float(info[key]), unit=_NO_UNITS,
                                      algorithm_id=template)
                    for key, code, meaning in _UNCERTAINTY_MEASURES if info.get(key) is not None]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Prediction uncertainty"),
        method=_private(f"UNC-{info['method']}", f"{info['method']} ({info.get('samples', '?')} samples)"),
        algorithm_id=template, measurements=measurements or None)


def _review_group(segmentation: Dataset, source, template, volume_mm3: float):
    """TID 1411: the review region, referencing segment 1 of the review SEG, with its volume."""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Review region"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID, segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(source[0].SeriesInstanceUID)),
        finding_type=codes.DCM.RegionInSpace, algorithm_id=template,
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=volume_mm3, unit=codes.UCUM.CubicMillimeter,
                                        algorithm_id=template)])


def _checks_group(applicability: Sequence[dict], checks: Sequence, template):
    """Applicability and trust checks as qualitative evaluations (status) and, where numeric, measurements."""
    evaluations, measurements = [], []
    for entry in applicability:
        inside = entry.get("inside")
        status = NOT_RUN if inside is None else (PASSED if inside else FAILED)
        name = _private(f"APPL-{entry.get('check', '')}", f"Applicability: {entry.get('check', '')}")
        evaluations.append(hd.sr.QualitativeEvaluation(name=name, value=_private(*_STATUS[status])))
    for check in checks:
        name = _private(f"TRUST-{check.name}", f"Trust check: {check.name}")
        evaluations.append(hd.sr.QualitativeEvaluation(name=name, value=_private(*_STATUS[check.status])))
        if check.value is not None:
            measurements.append(hd.sr.Measurement(name=name, value=float(check.value), unit=_NO_UNITS))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Trust checks"),
        algorithm_id=template, qualitative_evaluations=evaluations or None, measurements=measurements or None)


def _check_same_grid(image: sitk.Image, source: Sequence[Dataset]) -> None:
    """The maps must lie on the source series' grid, slice ``k`` on source image ``k``."""
    columns, rows, slices = image.GetSize()
    first = source[0]
    if (slices != len(source) or int(first.Rows) != rows or int(first.Columns) != columns):
        raise XAIInputError(
            f"The results ({columns}x{rows}x{slices}) are not on the grid of the DICOM series "
            f"({first.Columns}x{first.Rows}x{len(source)}); explain that series to write DICOM results for it.")
    for k in (0, len(source) - 1):
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
        if np.abs(position - np.array(source[k].ImagePositionPatient, dtype=float)).max() > _POSITION_TOLERANCE_MM:
            raise XAIInputError("The results are not on the DICOM series' grid (slice positions differ); "
                                "explain that series to write DICOM results for it.")


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    code = re.sub(r"[^A-Z0-9-]", "", value.upper().replace(" ", "-"))[:16] or "UNNAMED"
    return hd.sr.CodedConcept(value=code, scheme_designator=PRIVATE_SCHEME, meaning=_lo(meaning or value))


def _lo(text: str) -> str:
    """A Long String: 64 characters at most, no backslash or control characters."""
    return re.sub(r"[\\\x00-\x1f]", " ", str(text))[:64]


def _series_description(what: str) -> str:
    prefix = _lo(what)[: 64 - len(RESEARCH_USE) - 3].strip()
    return f"{prefix} - {RESEARCH_USE}"
