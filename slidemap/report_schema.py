"""What a saved training report holds: the schemas the trainers write and the dashboard reads.

``REGION/reports/unet/<run_id>/report.json`` (:class:`UnetReport`) and ``.../lsm/<run_id>/report.json``
(:class:`LsmReport`). The trainers validate each report against its schema before writing it, so a
change of shape fails their tests, and the dashboard parses what the server sends with the same
models, so neither side guesses. The schemas name the keys that readers rely on and allow others
(a report is evidence: a newer trainer may add a table without breaking an older dashboard).
Also the server's listings of them (``GET /reports``) and of the region's outputs (``GET /downloads``):
the server answers with these models and the dashboard parses them. A bottom-layer module like
:mod:`slidemap.errors`: pydantic only, imported by training, server and dashboard.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["LsmReport", "Output", "OutputsResponse", "ReportCommon", "ReportEntry", "ReportsResponse", "SplitMetrics",
           "UnetReport", "parse_report", "validate_report"]


class SplitMetrics(BaseModel):
    """One model's scores on one split's test part (metric names as scikit-learn's)."""

    model_config = ConfigDict(extra="allow")

    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    pr_auc: float | None = None
    roc_auc: float | None = None
    miou: float | None = None
    threshold: float | None = None


class ReportCommon(BaseModel):
    """What every report says: its kind, whether its data is SYNTHETIC, when, and which model versions."""

    model_config = ConfigDict(extra="allow")

    kind: str
    synthetic: bool | None = Field(None, description="True: generated data (SYNTHETIC); None: the report does not say")
    created: str | None = None
    run_id: str | None = None
    data: dict[str, Any] | str | None = None
    model_versions: dict[str, str] = Field(default_factory=dict, description="model name -> version")
    models: dict[str, dict[str, SplitMetrics | None]] = Field(default_factory=dict, description="model -> split -> scores")

    @field_validator("model_versions", mode="before")
    @classmethod
    def _versions_by_name(cls, value: Any) -> Any:
        """Older reports listed versions (or gave one): keyed by themselves, so lookups still work."""
        if value is None:
            return {}
        if isinstance(value, str):
            return {value: value}
        if isinstance(value, list):
            return {str(v): str(v) for v in value}
        return value


class PairedDifference(BaseModel):
    """One detector against a peer on the same test chips: F1 difference and its paired interval."""

    model_config = ConfigDict(extra="allow")

    model: str
    versus: str
    difference: float
    ci95: list[float]
    share_a_ahead: float


class UnetReport(ReportCommon):
    """A detector run (``slidemap train unet``): split sizes, the search, per-model pixel scores."""

    kind: Literal["unet"] = "unet"
    config: dict[str, Any] = Field(default_factory=dict)
    splits: dict[str, Any] = Field(default_factory=dict)
    hpo: list[dict[str, Any]] = Field(default_factory=list, description="every search trial, with what proposed it")
    best: dict[str, Any] | None = None
    default_detector: str | None = None
    primary_model: str | None = None
    paired: dict[str, list[PairedDifference]] = Field(
        default_factory=dict, description="split -> the primary model's F1 minus each peer's (paired bootstrap)")
    figures: list[str] = Field(default_factory=list)


class ClassTable(BaseModel):
    """The five susceptibility classes of the default model: breaks, areas and landslide shares."""

    model_config = ConfigDict(extra="allow")

    method: str | None = None
    model: str | None = None
    breaks: list[float] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    area_share: list[float] = Field(default_factory=list)
    landslide_share: list[float | None] = Field(default_factory=list)


class LsmReport(ReportCommon):
    """A susceptibility run (``slidemap train lsm``): every model beside its peers on the same splits."""

    kind: Literal["lsm"] = "lsm"
    config: dict[str, Any] = Field(default_factory=dict)
    ranking: list[Any] = Field(default_factory=list)
    default_model: str | None = None
    mcnemar: dict[str, Any] = Field(default_factory=dict)
    classes: ClassTable | None = None


SCHEMAS: dict[str, type[ReportCommon]] = {"unet": UnetReport, "lsm": LsmReport}


def validate_report(report: dict[str, Any]) -> None:
    """Raise pydantic's ValidationError when a report of a schema'd kind does not follow its schema
    (the trainers call this before writing)."""
    schema = SCHEMAS.get(str(report.get("kind")))
    if schema is not None:
        schema.model_validate(report)


def parse_report(data: dict[str, Any]) -> tuple[ReportCommon | None, str | None]:
    """A report's typed form (its kind's schema, or the common one), or None and what is wrong."""
    schema = SCHEMAS.get(str(data.get("kind")), ReportCommon)
    try:
        return schema.model_validate(data), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return None, f"does not follow the {schema.__name__} schema ({where}: {first.get('msg')}; {exc.error_count()} problem(s))"


# ---- the server's listings -------------------------------------------------------------------------
class ReportEntry(BaseModel):
    kind: str = Field(description="unet, lsm or inventory")
    run_id: str
    synthetic: bool | None = Field(None, description="the report's own SYNTHETIC flag; null where it has none")
    created: str | None = None
    href: str = Field(description="the report JSON, relative to the server's root")
    files: list[str] = Field(default_factory=list, description="figures and other files beside it, each at href + '/' + name")


class ReportsResponse(BaseModel):
    reports: list[ReportEntry]
    truncated: bool = Field(False, description="more runs than the server lists: the newest are listed")


class Output(BaseModel):
    """One file a slidemap command wrote in the region (``GET /downloads``)."""

    group: str = Field(description="Maps, Inventories, Tile archives or Reports")
    path: str = Field(description="the file's path inside the region folder")
    what: str
    size: int = Field(description="bytes")
    modified: float = Field(description="POSIX time of the last change")
    href: str = Field(description="the file, relative to the server's root")


class OutputsResponse(BaseModel):
    outputs: list[Output] = Field(description="grouped, newest first within a group")
