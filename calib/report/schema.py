"""Typed reports: one dataclass per command's report, with a shared header, and one `to_json()`.

The JSON form is the contract (report.json, compare.json, sensitivity.json: their keys keep their
meaning across versions); the renderers (markdown, HTML, console) read the JSON form, so a report
can be re-rendered from its file. Header fields come first, at the top level of the JSON, as they
always have. `report["key"]` reads the JSON form, for callers that treat a report as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from calib.report.format import printable

# 2: paired intervals, speed, size, verdict and per-class changes added (docs/report.md); every
# key of version 1 keeps its meaning.
SCHEMA_VERSION = 2


@dataclass
class ReportHeader:
    """What every report says about where its figures come from."""
    model: str
    dataset: str
    demo: bool
    backend: str
    qdq_flavor: str
    notes: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    model_sha256: str = ""
    device: str = "cpu"          # where the calibration pass and the evaluation ran
    decode_path: str = "pil"     # how images became pixels: "pil" (CPU) or e.g. "nvjpeg+pil-bicubic"
    # Where the figures come from, as the user named it (issue 22: `--eval-data-dir B` was reported
    # as the `--data-dir A` it sat beside, and only the hashed prepared copy of the model was named).
    model_file: str = ""                                       # the FP32 ONNX file resolve_model found
    calibration_data: dict = field(default_factory=dict)       # {source, folder, description}
    evaluation_data: dict | None = None                        # the same; None where nothing is evaluated
    # The notes that question the figures (also in `notes`, in the same words): printed on the
    # terminal as warnings at the end of a command, and marked "warning" in report.md.
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        """Add a note that questions the figures: to `notes` and `warnings`, once."""
        if text not in self.notes:
            self.notes.append(text)
        if text not in self.warnings:
            self.warnings.append(text)


class Report:
    """Base of the typed reports: `header` first, then the report's own fields; None-valued
    optional fields (listed in `optional`) are left out of the JSON."""
    optional: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with every string printable (`printable`): a file name that is not UTF-8
        reaches reports as surrogate escapes, which no UTF-8 writer or terminal accepts."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION} if hasattr(self, "header") else {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "header":
                out.update({h.name: getattr(value, h.name) for h in fields(value)})
            elif value is None and f.name in self.optional:
                continue
            else:
                out[f.name] = value.to_json() if isinstance(value, Report) else value
        return printable(out)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)


@dataclass
class EvalSection(Report):
    """The "eval" entry: the images evaluated and skipped, and how they relate to the calibration
    images (computed from the files: calib.data.overlap)."""
    samples: int
    skipped: int
    skipped_files: list[str]
    disjoint_from_calibration: bool
    overlap: dict
    overlap_text: str
    unlabeled: int
    seconds: float


@dataclass
class CalibrationSection(Report):
    """The "calibration" entry of a run report: the images calibrated on, the time it took, the
    cache written or reused."""
    samples: int
    seconds: float
    cache: str
    reused: bool
    skipped: int
    requested_samples: int | None


@dataclass
class SharedCalibrationSection(Report):
    """The "calibration" entry of a compare report: the calibrators that shared one pass over the
    images and the ones whose caches were reused."""
    samples: int
    shared_pass_seconds: float
    fresh: list[str]
    reused: list[str]
    note: str


@dataclass
class FallbackReport(Report):
    """The "fallback" entry of a run report: which layers stayed float to meet the budget, the
    search-subset figures and (once evaluated) the held-out figures."""
    budget: dict
    budget_text: str
    float_layers: list[str]
    layers: int
    search: dict
    final_images: int
    strategy: str
    measure: str
    ranking: list[str]
    ranking_images: int
    evaluations: int
    seconds: float
    throughput: dict | None
    slower_than_fp32: bool
    note: str
    final: dict | None = None
    final_met: bool | None = None
    optional: ClassVar[tuple[str, ...]] = ("final", "final_met")


@dataclass
class RunBase(Report):
    """What every `calib run` report holds, whatever the model's task: where the figures come from,
    the calibration and the evaluation images."""
    header: ReportHeader
    calibrator: str
    calibrator_params: dict
    preprocess: dict
    fp32_model: str
    int8_model: str
    calibration: CalibrationSection
    eval: EvalSection


@dataclass
class RunReport(RunBase):
    fp32: dict
    int8: dict
    bias_correction: bool
    top1_drop: float
    agreement: float
    top1_drop_ci95: list[float] | None = None
    agreement_ci95: list[float] | None = None
    paired: dict | None = None
    logits_sqnr_db: float | None = None
    logits_sqnr_db_ci95: list[float] | None = None
    speed: dict | None = None
    speed_ort_cpu: dict | None = None
    size_mb: dict | None = None
    classes: dict | None = None
    verdict: dict | None = None
    ort_kernels: dict | None = None
    fallback: FallbackReport | None = None
    placement: dict | None = None    # the nodes kept float on purpose: heads, --exclude, --exclude-op
    optional: ClassVar[tuple[str, ...]] = ("ort_kernels", "fallback", "speed_ort_cpu", "speed", "placement")


@dataclass
class TaskReport(RunBase):
    """The run report of a model that is not a classifier (task detect, segment or generic): every
    output judged against FP32 (`outputs`) and the task metric (`metric`), calib.metrics."""
    task: str
    outputs: list[dict]
    metric: dict
    placement: dict | None = None
    size_mb: dict | None = None
    labels: str | None = None        # the ground truth the metric is against (--labels), None: against FP32
    verdict: dict | None = None      # the recommendation from the metric's drop (calib.stats.verdict.recommend_metric)
    fallback: FallbackReport | None = None   # the float layers a --max-drop budget needed


@dataclass
class CompareReport(Report):
    header: ReportHeader
    kind: str
    out: str
    bias_correction: dict
    calibrators: list[str]
    chosen: str
    chosen_reason: str
    calibration: SharedCalibrationSection
    eval: EvalSection
    fp32: dict
    results: dict
    sqnr: dict
    histograms: dict
    classes: list[dict]
    flips: dict
    class_summary: dict | None = None
    ranking: list[dict] | None = None
    seconds: float | None = None


@dataclass
class SensitivityReport(Report):
    header: ReportHeader
    calibrator: str
    cache: str
    out: str
    bias_correction: bool
    sensitivity: dict


def as_json(report: Report | dict) -> dict:
    """The JSON form of a report, whether given the dataclass or the dict itself (made printable:
    a dict read back from a file may hold the surrogates an older calib wrote)."""
    return report.to_json() if isinstance(report, Report) else printable(report)
