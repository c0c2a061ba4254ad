"""The clinical task catalogue: which explanations, uncertainty and checks fit which clinical question.

The catalogue is data (``Resources/Tasks/tasks.json``, schema in ``Resources/Tasks/README.md``); this
module loads and validates it and filters models and explanation methods by task::

    task = get_task("brain-lesion-triage")
    task.recommended_methods          # ("gradcam", "occlusion", "ig")
    models_for_task(task)             # bundled models whose card lists this task
    methods_for_task(task, model)     # recommended first, then neutral; avoided ones left out

Loading needs only the standard library, so the Slicer module can fill its task picker before the
engine's dependencies (torch) are installed; method names are checked against the engine's explainers
whenever the engine is importable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import XAIInputError, XAIModelError
from .resources import tasks_dir

__all__ = [
    "CATALOGUE_ENV",
    "task_for_model",
    "MethodAdvice",
    "BenchEvidence",
    "UncertaintyAdvice",
    "Perturbation",
    "TrustThresholds",
    "ClinicalTask",
    "TaskCatalogue",
    "catalogue_path",
    "load_catalogue",
    "get_task",
    "task_ids",
    "models_for_task",
    "tasks_for_model",
    "check_model_for_task",
    "methods_for_task",
]

#: Environment variable that points to another catalogue file (tests, site-specific catalogues).
CATALOGUE_ENV = "SLICER_XAI_TASKS"
_MODEL_TASKS = ("classification", "segmentation")
_UNCERTAINTY = ("none", "mc-dropout", "tta", "ensemble")
_MEASURES = ("predicted_class_std", "predictive_entropy", "mutual_information", "lesion_entropy")


@dataclass(frozen=True)
class MethodAdvice:
    """An explanation method recommended for (or advised against for) a task, with the reason and, when
    the task has a bench, what was measured."""

    method: str
    reason: str
    evidence: Optional[str] = None

    @property
    def explanation(self) -> str:
        """The reason, then the measured evidence."""
        return f"{self.reason} {self.evidence}".strip() if self.reason else (self.evidence or "")


@dataclass(frozen=True)
class BenchEvidence:
    """What ``slicer-xai bench`` measured on the task's demo model (a committed ``bench.json``): the
    methods best first and one sentence per method."""

    model: str
    cases: int
    ranking: tuple[str, ...]
    sentences: Mapping[str, str]
    fails_randomisation: frozenset[str]

    def sentence(self, method: str) -> Optional[str]:
        if method not in self.sentences:
            return None
        return f"Measured by slicer-xai bench on {self.model} ({self.cases} cases with a lesion): {self.sentences[method]}."


@dataclass(frozen=True)
class UncertaintyAdvice:
    """The uncertainty estimate that fits a task and the measure read from it."""

    method: str
    measure: str
    reason: str


@dataclass(frozen=True)
class Perturbation:
    """One robustness perturbation of the shared vocabulary (ids used by ``slicer-xai robustness``)."""

    id: str
    title: str
    modalities: tuple[str, ...]
    models: str


@dataclass(frozen=True)
class TrustThresholds:
    """When an explanation counts as trustworthy for a task.

    ``sanity_required``: the model-randomisation check must have passed (maps of a randomised model
    must differ: similarity at most ``max_sanity_similarity``). ``min_stability_spearman``: rank
    correlation of the map with the unperturbed one under every relevant perturbation at plausible
    severities, i.e. up to ``max_plausible_severity`` times the largest severity of that perturbation's
    sweep. ``deletion_auc_margin`` / ``insertion_auc_margin``: how far the
    deletion curve must lie below (insertion above) the random-order curve.
    """

    sanity_required: bool = True
    max_sanity_similarity: float = 0.5
    min_stability_spearman: float = 0.6
    max_plausible_severity: float = 0.5
    allow_prediction_change: bool = False
    deletion_auc_margin: float = 0.05
    insertion_auc_margin: float = 0.05


@dataclass(frozen=True)
class ClinicalTask:
    """One entry of the catalogue."""

    id: str
    title: str
    question: str
    modality: str
    model_tasks: tuple[str, ...]
    finding: str
    plain_words: Mapping[str, str]
    recommended: tuple[MethodAdvice, ...]
    avoid: tuple[MethodAdvice, ...]
    uncertainty: UncertaintyAdvice
    perturbations: tuple[str, ...]
    robustness_reason: str
    trust: TrustThresholds
    review: Mapping[str, float] = field(default_factory=dict)
    evidence: Optional[BenchEvidence] = None
    #: A task for any model of its kind and modality (a model whose card names no task gets it).
    generic: bool = False

    @property
    def recommended_methods(self) -> tuple[str, ...]:
        return tuple(a.method for a in self.recommended)

    @property
    def avoided_methods(self) -> tuple[str, ...]:
        return tuple(a.method for a in self.avoid)

    @property
    def primary_method(self) -> str:
        """The one explanation shown when only one is shown (the first recommended)."""
        return self.recommended[0].method

    def advice_text(self, method: str) -> str:
        """:meth:`advice` as one line for a hint or tooltip ("" when the task says nothing about it)."""
        status, reason = self.advice(method)
        words = {"recommended": "Recommended for this task", "avoid": "Advised against for this task"}
        return f"{words[status]}: {reason}" if status in words else (reason or "")

    def advice(self, method: str) -> tuple[str, Optional[str]]:
        """``("recommended" | "avoid" | "neutral", reason or None)`` for ``method``; the reason ends
        with the bench's measurement when there is one."""
        for status, entries in (("recommended", self.recommended), ("avoid", self.avoid)):
            for entry in entries:
                if entry.method == method:
                    return status, entry.explanation
        return "neutral", self.evidence.sentence(method) if self.evidence is not None else None


@dataclass(frozen=True)
class TaskCatalogue:
    """All tasks and the perturbation vocabulary, as read from one file."""

    path: Path
    tasks: Mapping[str, ClinicalTask]
    perturbations: Mapping[str, Perturbation]

    def get(self, task_id: str) -> ClinicalTask:
        """The task ``task_id``; an unknown id is an :class:`XAIInputError` that lists the known ones."""
        if isinstance(task_id, ClinicalTask):
            return task_id
        if task_id not in self.tasks:
            raise XAIInputError(f"Unknown clinical task '{task_id}'; choose one of {', '.join(self.tasks)}.")
        return self.tasks[task_id]


def catalogue_path() -> Path:
    """``$SLICER_XAI_TASKS`` if set, else ``Resources/Tasks/tasks.json`` of the extension."""
    override = os.environ.get(CATALOGUE_ENV)
    if override:
        return Path(override)
    return tasks_dir() / "tasks.json"


def load_catalogue(path: Optional[str | os.PathLike] = None) -> TaskCatalogue:
    """Read and validate a catalogue file (default :func:`catalogue_path`); cached per path and mtime."""
    resolved = Path(path) if path is not None else catalogue_path()
    try:
        stamp = resolved.stat().st_mtime_ns
    except OSError:
        raise XAIInputError(f"The clinical task catalogue {resolved} does not exist.") from None
    return _load_cached(str(resolved.absolute()), stamp)


def get_task(task_id: str | ClinicalTask, catalogue: Optional[TaskCatalogue] = None) -> ClinicalTask:
    """The catalogue entry ``task_id`` (a :class:`ClinicalTask` is returned as it is)."""
    if isinstance(task_id, ClinicalTask):
        return task_id
    return (catalogue or load_catalogue()).get(task_id)


def task_ids(catalogue: Optional[TaskCatalogue] = None) -> list[str]:
    return list((catalogue or load_catalogue()).tasks)


def models_for_task(task: str | ClinicalTask, models: Optional[Iterable[Mapping[str, Any]]] = None) -> list[dict]:
    """Models (entries like :func:`~XAIExplainLib.models.list_bundled_models` returns) that serve ``task``:
    their card lists the task in ``clinical_tasks`` and their model task fits it."""
    task = get_task(task)
    if models is None:
        from .models import list_bundled_models

        models = list_bundled_models()
    return [dict(m) for m in models if "error" not in m and task.id in m.get("clinical_tasks", ())
            and m.get("task") in task.model_tasks]


def tasks_for_model(model: Any, catalogue: Optional[TaskCatalogue] = None) -> list[ClinicalTask]:
    """Catalogue tasks a model serves (its card's ``clinical_tasks`` that exist in the catalogue)."""
    catalogue = catalogue or load_catalogue()
    return [catalogue.tasks[t] for t in _model_field(model, "clinical_tasks") or () if t in catalogue.tasks]


def task_for_model(model: Any, catalogue: Optional[TaskCatalogue] = None) -> ClinicalTask:
    """The model's first catalogue task; for a model whose card names none (a bundle brought by its user),
    the generic task of its kind and modality. Raises :class:`XAIInputError` naming the choices otherwise."""
    catalogue = catalogue or load_catalogue()
    served = tasks_for_model(model, catalogue)
    if served:
        return served[0]
    kind, modality = _model_field(model, "task"), (_model_field(model, "modality") or "").upper()
    generic = [t for t in catalogue.tasks.values() if t.generic and kind in t.model_tasks]
    fitting = [t for t in generic if t.modality.upper() == modality]
    if fitting:
        return fitting[0]
    name = _model_field(model, "name") or "the model"
    raise XAIInputError(f"Model {name} names no clinical task and its modality is {modality or 'not stated'}: "
                        f"give one with --task ({', '.join(t.id for t in generic) or 'none fits a ' + str(kind)}).")


def check_model_for_task(model: Any, task: str | ClinicalTask) -> Optional[str]:
    """Raise :class:`XAIModelError` when ``model`` cannot answer ``task`` (wrong model task or modality);
    return a caveat (one sentence) when it could but its card does not list the task, else ``None``.

    ``model``: a :class:`~XAIExplainLib.models.ModelSpec`, a loaded model or a model-list entry.
    """
    task = get_task(task)
    name = _model_field(model, "name") or "the model"
    kind = _model_field(model, "task")
    if kind not in task.model_tasks:
        raise XAIModelError(f"Model {name} is a {kind} model; the task '{task.id}' needs a "
                            f"{' or '.join(task.model_tasks)} model.")
    modality = _model_field(model, "modality")
    if modality and modality.upper() != task.modality.upper():
        raise XAIModelError(f"Model {name} was made for {modality} images; the task '{task.id}' is about {task.modality}.")
    if task.id not in (_model_field(model, "clinical_tasks") or ()):
        return f"The card of {name} does not list the task '{task.id}': it was not validated for it."
    return None


def methods_for_task(task: str | ClinicalTask, model: Any = None, include_avoided: bool = False) -> list[str]:
    """Explanation methods for ``task``: the recommended ones first, then the others, the ones the task
    advises against only with ``include_avoided`` (last). With ``model``, methods the model cannot run
    are left out (CAM methods need a target layer and a non-TorchScript network)."""
    from .explainers import EXPLAINERS

    task = get_task(task)
    ordered = list(task.recommended_methods)
    ordered += [m for m in EXPLAINERS if m not in ordered and m not in task.avoided_methods]
    if include_avoided:
        ordered += [m for m in task.avoided_methods if m not in ordered]
    if model is None:
        return ordered
    has_layer = bool(_model_field(model, "cam_target_layer")) and not getattr(model, "is_torchscript", False)
    return [m for m in ordered if has_layer or not EXPLAINERS[m].needs_layer]


def _model_field(model: Any, name: str) -> Any:
    """A card field from a ModelSpec, a LoadedModel (``.spec``) or a model-list dict."""
    if isinstance(model, Mapping):
        return model.get(name)
    spec = getattr(model, "spec", model)
    return getattr(spec, name, None)


@lru_cache(maxsize=8)
def _load_cached(path: str, _stamp: int) -> TaskCatalogue:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise XAIInputError(f"The clinical task catalogue {path} cannot be read: {error}.") from None
    return _parse(Path(path), data, _known_methods())


def _known_methods() -> Optional[Sequence[str]]:
    try:
        from .explainers import EXPLAINERS
    except ImportError:  # engine not installed yet (Slicer before the first Apply): names not checked
        return None
    return tuple(EXPLAINERS)


def _parse(path: Path, data: Any, known_methods: Optional[Sequence[str]]) -> TaskCatalogue:
    def fail(message: str) -> XAIInputError:
        return XAIInputError(f"Clinical task catalogue {path.name}: {message}")

    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), list):
        raise fail("expected an object with a 'tasks' list.")
    perturbations = {}
    for pid, entry in (data.get("perturbations") or {}).items():
        perturbations[pid] = Perturbation(pid, str(entry.get("title", pid)), tuple(entry.get("modalities", ())),
                                          str(entry.get("models", "")))
    tasks: dict[str, ClinicalTask] = {}
    for raw in data["tasks"]:
        try:
            task = _parse_task(raw)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise fail(f"task {raw.get('id', '?') if isinstance(raw, Mapping) else '?'} is malformed ({error}).") from None
        if task.id in tasks:
            raise fail(f"task '{task.id}' is listed twice.")
        problems = _task_problems(task, perturbations, known_methods)
        if raw.get("evidence") and not problems:
            task, evidence_problems = _with_evidence(task, path.parent / str(raw["evidence"]))
            problems += evidence_problems
        if problems:
            raise fail(f"task '{task.id}': {'; '.join(problems)}.")
        tasks[task.id] = task
    if not tasks:
        raise fail("it lists no tasks.")
    return TaskCatalogue(path=path, tasks=tasks, perturbations=perturbations)


def _parse_task(raw: Mapping[str, Any]) -> ClinicalTask:
    methods = raw["methods"]
    trust = raw.get("trust", {})
    sanity, stability, faithfulness = trust.get("sanity", {}), trust.get("stability", {}), trust.get("faithfulness", {})
    defaults = TrustThresholds()
    return ClinicalTask(
        id=str(raw["id"]),
        title=str(raw["title"]),
        question=str(raw["question"]),
        modality=str(raw["modality"]),
        model_tasks=tuple(raw["model_tasks"]),
        finding=str(raw.get("finding", "finding")),
        plain_words={"scan": "scan", "body_part": "body", "finding_means": "something the model looks for",
                     **{str(k): str(v) for k, v in (raw.get("plain_words") or {}).items()}},
        recommended=tuple(MethodAdvice(str(m["method"]), str(m["reason"])) for m in methods["recommended"]),
        avoid=tuple(MethodAdvice(str(m["method"]), str(m["reason"])) for m in methods.get("avoid", ())),
        uncertainty=UncertaintyAdvice(str(raw["uncertainty"]["method"]), str(raw["uncertainty"]["measure"]),
                                      str(raw["uncertainty"]["reason"])),
        perturbations=tuple(raw["robustness"]["perturbations"]),
        robustness_reason=str(raw["robustness"].get("reason", "")),
        trust=TrustThresholds(
            sanity_required=bool(sanity.get("required", defaults.sanity_required)),
            max_sanity_similarity=float(sanity.get("max_similarity_after_randomisation", defaults.max_sanity_similarity)),
            min_stability_spearman=float(stability.get("min_spearman", defaults.min_stability_spearman)),
            max_plausible_severity=float(stability.get("max_plausible_severity", defaults.max_plausible_severity)),
            allow_prediction_change=bool(stability.get("allow_prediction_change", defaults.allow_prediction_change)),
            deletion_auc_margin=float(faithfulness.get("deletion_auc_margin", defaults.deletion_auc_margin)),
            insertion_auc_margin=float(faithfulness.get("insertion_auc_margin", defaults.insertion_auc_margin)),
        ),
        review={str(k): float(v) for k, v in (raw.get("review") or {}).items()},
        generic=raw.get("generic") is True,
    )


def _task_problems(task: ClinicalTask, perturbations: Mapping[str, Perturbation],
                   known_methods: Optional[Sequence[str]]) -> list[str]:
    problems = []
    if not task.recommended:
        problems.append("no recommended explanation method")
    both = set(task.recommended_methods) & set(task.avoided_methods)
    if both:
        problems.append(f"{', '.join(sorted(both))} both recommended and avoided")
    if known_methods is not None:
        unknown = [m for m in (*task.recommended_methods, *task.avoided_methods) if m not in known_methods]
        if unknown:
            problems.append(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(known_methods)})")
    bad_kinds = [k for k in task.model_tasks if k not in _MODEL_TASKS]
    if not task.model_tasks or bad_kinds:
        problems.append(f"model_tasks must be among {', '.join(_MODEL_TASKS)}")
    if task.uncertainty.method not in _UNCERTAINTY:
        problems.append(f"uncertainty method must be one of {', '.join(_UNCERTAINTY)}")
    if task.uncertainty.measure not in _MEASURES:
        problems.append(f"uncertainty measure must be one of {', '.join(_MEASURES)}")
    for pid in task.perturbations:
        if pid not in perturbations:
            problems.append(f"unknown perturbation '{pid}'")
        elif perturbations[pid].modalities and task.modality not in perturbations[pid].modalities:
            problems.append(f"perturbation '{pid}' does not apply to {task.modality}")
    return problems


def _read_evidence(file: Path) -> BenchEvidence:
    """A ``bench.json`` written by ``slicer-xai bench`` (its ``verdicts`` are ordered best first)."""
    data = json.loads(file.read_text(encoding="utf-8"))
    verdicts = data["verdicts"]
    return BenchEvidence(
        model=str(data["model"]), cases=len(data["settings"]["cases"]), ranking=tuple(verdicts),
        sentences={str(k): str(v) for k, v in data["evidence"].items()},
        fails_randomisation=frozenset(m for m, v in verdicts.items() if v.get("passes_randomisation") is False),
    )


def _with_evidence(task: ClinicalTask, file: Path) -> tuple[ClinicalTask, list[str]]:
    """Attach the bench's measurements to ``task`` and check that its advice follows from them: the first
    recommended method is the bench's best-ranked one, and no recommended method fails the
    model-randomisation check."""
    try:
        evidence = _read_evidence(file)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return task, [f"its bench evidence {file.name} cannot be read ({error})"]
    problems = []
    if evidence.ranking and task.primary_method != evidence.ranking[0]:
        problems.append(f"the first recommended method is {task.primary_method} but the bench ({file.name}) ranks "
                        f"{evidence.ranking[0]} first")
    failing = [m for m in task.recommended_methods if m in evidence.fails_randomisation]
    if failing:
        problems.append(f"{', '.join(failing)} recommended but fail(s) the randomisation check in {file.name}")

    def measured(entries: tuple[MethodAdvice, ...]) -> tuple[MethodAdvice, ...]:
        return tuple(replace(a, evidence=evidence.sentence(a.method)) for a in entries)

    task = replace(task, recommended=measured(task.recommended), avoid=measured(task.avoid), evidence=evidence)
    return task, problems
