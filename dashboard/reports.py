"""Report pages: read the saved training reports (JSON + PNG) and show them; never recompute.

Reports are found by content, not by file name: any ``*.json`` under ``REGION/reports/`` or under an
extra folder (such as the repo's ``reports/real/``, which holds ``ecuador_lsm.json`` beside
``l4s/report.json``) that is a JSON object with a ``kind`` and a ``created`` or ``synthetic`` key, and
is not a model card. Its page is its kind's family (``unet-real-eval`` is shown on the ``unet`` page). Its figures are
the PNGs beside a ``report.json`` (one run per folder) or, for a named report ``X.json``, the PNGs
named ``X*.png`` and those its ``figures`` key lists.
Readers are tolerant: they show the keys that are there and say which expected ones are missing.
Real-data reports and SYNTHETIC ones are always shown apart and labelled.

The region's own reports come from the tile server (``GET /reports``, each report's JSON and figures
from its routes: :func:`fetch_reports`), so the dashboard needs no copy of the region. Only when the
server cannot answer and a region folder was given are they read from that folder, and the page says
so. Extra folders (``--reports``) are this machine's and are always read from disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slidemap.report_schema import ReportCommon, ReportsResponse, parse_report

KINDS = ("unet", "lsm", "inventory")
UNET_METRICS = ("accuracy", "precision", "recall", "f1", "miou", "pr_auc", "threshold")
LSM_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "threshold", "f1_macro",
               "precision_macro", "recall_macro")
LSM_MODELS = ("small", "medium", "large", "multiscale", "multiscale_dense", "gbdt_lr", "logreg", "random_forest")
SPLITS = ("random", "blocked")
SPLIT_NAMES = {"random": "random 80/20 split", "blocked": "spatially blocked 80/20 split"}


@dataclass(frozen=True)
class Figure:
    """One figure of a report: a PNG on this machine or at a URL of the tile server."""

    name: str
    path: Path | None = None
    url: str | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def image(self) -> str | bytes:
        """What ``st.image`` takes: the local path, or the figure's bytes fetched from the server
        (fetched here, not by the browser, so the page works wherever the browser is)."""
        if self.path is not None:
            return str(self.path)
        from slidemap.dashboard.client import get_bytes

        return get_bytes(str(self.url))


@dataclass(frozen=True)
class Report:
    """One saved report: where it came from, its JSON (or why it could not be read)."""

    kind: str  # the report's own kind: unet, lsm, inventory, unet-real-eval, ...
    run_id: str
    folder: Path | None  # None for a report read from the tile server
    data: dict[str, Any]
    error: str | None = None
    source: Path | None = None  # the JSON file
    figure_urls: tuple[str, ...] = ()  # a server report's figures
    url: str | None = None  # a server report's JSON

    @property
    def origin(self) -> str:
        """Where the report was read: its folder on this machine or its URL."""
        return str(self.folder) if self.folder is not None else str(self.url)

    @property
    def page(self) -> str:
        """The dashboard page that shows it: unet | lsm | inventory (the kind's family)."""
        return page_kind(self.kind)

    @property
    def synthetic(self) -> bool | None:
        value = self.data.get("synthetic")
        return value if isinstance(value, bool) else None

    @property
    def label(self) -> str:
        """``SYNTHETIC`` / ``REAL`` / ``UNMARKED``: printed beside every figure of the report."""
        return {True: "SYNTHETIC", False: "REAL"}.get(self.synthetic, "UNMARKED")

    @property
    def created(self) -> str:
        return str(self.data.get("created") or "")

    @property
    def title(self) -> str:
        data = self.data.get("data")
        if isinstance(data, dict):
            what = str(data.get("name") or data.get("region") or data.get("source") or "")
        else:
            what = str(data or "")
        return f"[{self.label}] {self.kind} {self.run_id}" + (f" — {what}" if what else "")

    @cached_property
    def parsed(self) -> tuple[ReportCommon | None, str | None]:
        """The report as its kind's schema reads it (:mod:`slidemap.report_schema`), or what is wrong."""
        if self.error:
            return None, self.error
        return parse_report(self.data)

    def versions(self) -> set[str]:
        """Every model version the report names (the schema keys them by model name)."""
        typed, _ = self.parsed
        if typed is not None:
            return set(typed.model_versions.values())
        return set(_strings(self.data.get("model_versions")))  # off-schema: whatever strings it holds

    def images(self) -> list[Figure]:
        """A run folder's PNGs; for a named report ``X.json``, ``X*.png`` and the files ``figures`` lists;
        for a server report, the PNGs its listing names."""
        if self.folder is None:
            return [Figure(url.rsplit("/", 1)[-1], url=url) for url in self.figure_urls]
        if self.source is None or self.source.name == REPORT_FILE:
            return [Figure(p.name, path=p) for p in sorted(self.folder.glob("*.png"))]
        found = set(self.folder.glob(f"{glob_escape(self.source.stem)}*.png"))
        found.update(self.folder / name for name in _strings(self.data.get("figures"))
                     if name.lower().endswith(".png") and "/" not in name and (self.folder / name).is_file())
        return [Figure(p.name, path=p) for p in sorted(found)]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


REPORT_FILE = "report.json"
MAX_REPORT_BYTES = 20_000_000  # a bigger JSON file is data, not a report; it is not read


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def page_kind(kind: str) -> str:
    """The page a report kind belongs to: itself, or its family (``unet-real-eval``, ``lsm_map``)."""
    if kind in KINDS:
        return kind
    family = kind.replace("_", "-").split("-", 1)[0]
    return family if family in KINDS else kind


def is_report(data: Any) -> bool:
    """What makes a JSON document a report: an object with a ``kind`` and a ``created`` or ``synthetic``
    key that is not a model card (cards carry ``weights`` and a ``version``)."""
    if not isinstance(data, dict):
        return False
    kind = data.get("kind")
    if not (isinstance(kind, str) and kind) or not ("created" in data or "synthetic" in data):
        return False
    return not ("weights" in data and "version" in data)


def _kind_of(path: Path, data: dict[str, Any]) -> str:
    kind = data.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    for part in reversed(path.parts[:-2]):  # .../<kind>/<run_id>/report.json
        if part in KINDS:
            return part
    return "unknown"


def _run_id(path: Path) -> str:
    return path.parent.name if path.name == REPORT_FILE else path.stem


def load_report(path: Path) -> Report:
    """Read one report file; an unreadable one becomes a Report with ``error`` set."""
    run_id = _run_id(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return Report("unknown", run_id, path.parent, {}, f"{path}: cannot be read ({exc})", path)
    except json.JSONDecodeError as exc:
        return Report("unknown", run_id, path.parent, {}, f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})", path)
    if not isinstance(data, dict):
        return Report("unknown", run_id, path.parent, {}, f"{path}: a report must be a JSON object", path)
    return Report(_kind_of(path, data), run_id, path.parent, data, None, path)


def _candidate(path: Path) -> Report | None:
    """``path`` as a report if its content is one; a broken ``report.json`` is kept (and shown as broken),
    any other JSON file that is not a report is left out."""
    named = path.name == REPORT_FILE
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return Report("unknown", _run_id(path), path.parent, {}, f"{path}: too large for a report", path) if named else None
    except OSError:
        return None
    report = load_report(path)
    if report.error:
        return report if named else None
    if is_report(report.data) or (named and report.kind != "unknown"):
        return report
    return None


def find_reports(region_dir: Path | None, extra_dirs: Iterable[Path] = ()) -> list[Report]:
    """Every report (by content) under the region's ``reports/`` and the extra folders, newest first,
    each file once."""
    folders = [region_dir / "reports"] if region_dir is not None else []
    folders.extend(extra_dirs)
    seen: set[Path] = set()
    reports = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.json")):
            resolved = path.resolve()
            if resolved in seen or not path.is_file():
                continue
            seen.add(resolved)
            report = _candidate(path)
            if report is not None:
                reports.append(report)
    reports.sort(key=lambda r: r.created, reverse=True)
    return reports


_FETCHED: dict[tuple[str, str | None], dict[str, Any]] = {}  # (report URL, created) -> its JSON; reports do not change


def fetch_reports(server: str) -> list[Report]:
    """The region's reports from the tile server, newest first. Raises the client's ServerUnavailable /
    ServerFailed when the listing cannot be had; a report whose JSON cannot be had is kept, broken."""
    from slidemap.dashboard.client import ServerFailed, ServerUnavailable, get_json

    base = server.rstrip("/")
    try:
        listing = ReportsResponse.model_validate(get_json(f"{base}/reports"))
    except ValidationError as exc:
        raise ServerFailed(f"the tile server's {base}/reports is not a report listing "
                           f"({exc.errors()[0]['msg']})") from exc
    found = []
    for entry in listing.reports:
        url = f"{base}{entry.href}"
        figures = tuple(f"{url}/{name}" for name in entry.files if name.lower().endswith(".png"))
        key = (url, entry.created)
        try:
            data = _FETCHED.get(key)
            if data is None:
                data = get_json(url)
                if not isinstance(data, dict):
                    raise ServerFailed(f"{url}: a report must be a JSON object")
                _FETCHED[key] = data
        except (ServerUnavailable, ServerFailed) as exc:
            found.append(Report("unknown", entry.run_id, None, {}, str(exc), None, figures, url))
            continue
        kind = data.get("kind") if isinstance(data.get("kind"), str) and data.get("kind") else entry.kind
        found.append(Report(kind, entry.run_id, None, data, None, None, figures, url))
    found.sort(key=lambda r: r.created, reverse=True)
    return found


def region_reports(server: str, region_dir: Path | None, extra_dirs: Iterable[Path] = ()) -> tuple[list[Report], str | None]:
    """The reports to show: the region's from the server (from ``region_dir`` only when the server
    cannot answer), and those of the extra folders; with a note when the server could not answer."""
    from slidemap.dashboard.client import ServerFailed, ServerUnavailable

    note = None
    try:
        found = fetch_reports(server)
    except (ServerUnavailable, ServerFailed) as exc:
        if region_dir is not None:
            note = f"The tile server did not list the region's reports ({exc}); they are read from {region_dir}."
            found = find_reports(region_dir)
        else:
            note = f"The tile server did not list the region's reports ({exc}); start it to see them."
            found = []
    extra = find_reports(None, extra_dirs)
    both = found + extra
    both.sort(key=lambda r: r.created, reverse=True)
    return both, note


def for_versions(reports: list[Report], versions: dict[str, str]) -> list[Report]:
    """Reports of the chosen model versions; reports that name no version are kept (said so on screen)."""
    chosen = {v for v in versions.values() if v}
    if not chosen:
        return reports
    return [r for r in reports if not r.versions() or r.versions() & chosen]


def metrics_rows(
    models: Any, split: str, metrics: tuple[str, ...], extras: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows ``{model, metric...}`` for one split (other scalar metrics too with ``extras``), and notes
    on what is missing."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if not isinstance(models, dict):
        return rows, ["the report has no `models` table"]
    for name, by_split in models.items():
        m = by_split.get(split) if isinstance(by_split, dict) else None
        if not isinstance(m, dict):
            notes.append(f"{name}: no {split} split")
            continue
        row: dict[str, Any] = {"model": name}
        for key in metrics:
            if key in m:
                row[key] = _scalar(m[key])
        # Extra scalar metrics are shown too: tolerant of schemas that grow.
        for key, value in m.items() if extras else ():
            if key not in row and isinstance(value, (int, float, str)) and not isinstance(value, bool):
                row[key] = value
        missing = [k for k in metrics if k not in m and not k.endswith("_macro")]
        if missing:
            notes.append(f"{name} ({split}): missing {', '.join(missing)}")
        rows.append(row)
    return rows, notes


def _scalar(value: Any) -> Any:
    if isinstance(value, dict):  # e.g. {"binary": x, "macro": y}
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return value


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table_rows(value: Any, key_name: str = "name") -> list[dict[str, Any]]:
    """A dict of dicts (McNemar, classes, ...) or a list of dicts as table rows; scalars as one row each."""
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return [{k: _cell(v) for k, v in item.items()} for item in value]
        return [{"#": i, "value": _text(v)} for i, v in enumerate(value)]
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) for v in value.values()):
            return [{key_name: k, **{kk: _cell(vv) for kk, vv in v.items()}} for k, v in value.items()]
        # one column of mixed values (numbers, text, small dicts): shown as text
        return [{key_name: k, "value": _text(v)} for k, v in value.items()]
    return [{"value": _text(value)}]


def p_value(value: Any) -> str:
    """A p-value as people read it: 0.003, 2.1e-05, < 1e-10."""
    if not isinstance(value, (int, float)) or value != value:
        return "n/a" if value is None else str(value)
    if value < 1e-10:
        return "< 1e-10"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def mcnemar_rows(tests: dict[str, Any]) -> list[dict[str, Any]]:
    """McNemar per compared model with its 2 x 2 table spelled out (A = the multi-scale model)."""
    rows = []
    for other, t in tests.items():
        if not isinstance(t, dict):
            continue
        row: dict[str, Any] = {"versus": other,
                               "chi2": round(t["chi2"], 3) if isinstance(t.get("chi2"), (int, float)) else None,
                               "p": p_value(t.get("p"))}
        table = t.get("table")
        if isinstance(table, list) and len(table) == 2 and all(isinstance(r, list) and len(r) == 2 for r in table):
            (a, b), (c, d) = table
            row.update({"both right": a, "only multiscale right": b, "only other right": c, "both wrong": d})
        if t.get("method"):
            row["test"] = t["method"]
        rows.append(row)
    return rows


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def class_rows(classes: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class from parallel lists (``names``, ``breaks``, ``area_share``, ...)."""
    names = classes.get("names")
    breaks = classes.get("breaks")
    n = len(names) if isinstance(names, list) else len(breaks) if isinstance(breaks, list) else 0
    if not n:
        return []
    columns = {k: v for k, v in classes.items() if isinstance(v, list) and len(v) == n}
    rows = []
    for i in range(n):
        row: dict[str, Any] = {} if "names" in columns else {"class": i + 1}
        row.update({k: _cell(v[i]) for k, v in columns.items()})
        rows.append(row)
    return rows


def _short(value: Any, limit: int = 160) -> str:
    """A one-line summary: the scalar items of a dict (grids, variograms and the like left out)."""
    if isinstance(value, dict):
        text = ", ".join(f"{k} {v}" for k, v in value.items() if isinstance(v, (str, int, float, bool)))
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


# --------------------------------------------------------------------------------------------
# Streamlit rendering


def _badge(report: Report) -> None:
    import streamlit as st

    _, problem = report.parsed
    if problem and not report.error:
        st.warning(f"This report {problem}; what could be read is shown.")
    if report.synthetic is True:
        st.warning("SYNTHETIC data: these figures come from a generated demo region, not from real landslides.")
    elif report.synthetic is False:
        st.success("REAL data: computed on real observations.")
    else:
        st.info("UNMARKED: the report does not say whether its data is synthetic (no `synthetic` key).")
    meta = {k: _short(report.data.get(k)) for k in ("data", "created", "preset", "model_versions")
            if report.data.get(k) is not None}
    if meta:
        st.caption(" · ".join(f"{k}: {v}" for k, v in meta.items()))
    if isinstance(report.data.get("metric_definitions"), str):
        st.caption(report.data["metric_definitions"])
    st.caption(f"from: {report.origin}")


def _split_tables(report: Report, metrics: tuple[str, ...]) -> None:
    """Random vs spatially blocked, side by side."""
    import streamlit as st

    models = report.data.get("models")
    if not isinstance(models, dict) or not models:
        st.info("This report has no `models` table.")
        return
    notes: list[str] = []
    for split, col in zip(SPLITS, st.columns(2), strict=True):
        rows, split_notes = metrics_rows(models, split, metrics)
        notes.extend(split_notes)
        with col:
            st.markdown(f"**{SPLIT_NAMES[split]}** [{report.label}]")
            if rows:
                st.dataframe(rows, hide_index=True)
            else:
                st.info(f"No {split}-split results in this report.")
    if notes:
        st.caption("Missing: " + "; ".join(notes))


def show_figure(figure: Figure, report: Report, width: int | None = 760) -> bool:
    """One figure with its report's label; a figure the server cannot send is a caption, not an error."""
    import streamlit as st

    from slidemap.dashboard.client import ServerFailed, ServerUnavailable

    try:
        image = figure.image()
    except (ServerUnavailable, ServerFailed) as exc:
        st.caption(f"{figure.name}: not shown ({exc})")
        return False
    if width is None:
        st.image(image, caption=f"{figure.name} [{report.label}]")
    else:
        st.image(image, caption=f"{figure.name} [{report.label}]", width=width)
    return True


def _images(report: Report, wanted: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[Figure]:
    shown = []
    for figure in report.images():
        name = figure.stem.lower()
        if wanted and not any(w in name for w in wanted):
            continue
        if any(e in name for e in exclude):
            continue
        if show_figure(figure, report):
            shown.append(figure)
    return shown


def _other_keys(report: Report, known: set[str]) -> None:
    import streamlit as st

    extra = {k: v for k, v in report.data.items() if k not in known}
    if extra:
        with st.expander("Other keys in this report"):
            st.json(extra)


_META = {"kind", "synthetic", "data", "created", "model_versions", "metric_definitions", "preset"}


def render_unet(report: Report) -> None:
    import streamlit as st

    _badge(report)
    hpo = report.data.get("hpo")
    st.markdown(f"#### Hyperparameter search (GP + expected improvement) [{report.label}]")
    if isinstance(hpo, list) and hpo:
        rows = table_rows(hpo)
        st.dataframe(rows, hide_index=True)
        scores = [(r.get("iteration", i + 1), r.get("score")) for i, r in enumerate(rows)]
        scores = [(i, s) for i, s in scores if isinstance(s, (int, float))]
        if scores:
            st.markdown(f"Score per iteration [{report.label}]")
            st.line_chart({"iteration": [i for i, _ in scores], "score": [s for _, s in scores]},
                          x="iteration", y="score", x_label="iteration", y_label="score")
    else:
        st.info("This report has no `hpo` iterations.")
    best = report.data.get("best")
    if isinstance(best, dict):
        st.markdown("**Best set:** " + ", ".join(f"{k} = {_fmt(v)}" for k, v in best.items()))
    else:
        st.info("This report has no `best` hyperparameters.")
    st.markdown(f"#### Models on the test splits [{report.label}]")
    _split_tables(report, UNET_METRICS)
    st.markdown(f"#### Training curves and figures [{report.label}]")
    if not _images(report):
        st.info("No figures (PNG) saved beside this report.")
    _other_keys(report, _META | {"hpo", "best", "models"})


def render_lsm(report: Report) -> None:
    import streamlit as st

    _badge(report)
    st.markdown(f"#### Susceptibility models on both splits [{report.label}]")
    _split_tables(report, LSM_METRICS)
    models = report.data.get("models")
    if isinstance(models, dict):
        absent = [m for m in LSM_MODELS if m not in models]
        if absent:
            st.caption("Models not in this report: " + ", ".join(absent))
    st.markdown(f"#### McNemar's test, multi-scale vs each model [{report.label}]")
    mcnemar = report.data.get("mcnemar")
    if mcnemar:
        if isinstance(mcnemar, dict) and all(isinstance(v, dict) for v in mcnemar.values()) and \
                any(s in mcnemar for s in SPLITS):
            for split, col in zip(SPLITS, st.columns(2), strict=True):
                with col:
                    st.markdown(f"**{SPLIT_NAMES[split]}**")
                    if split in mcnemar:
                        st.dataframe(mcnemar_rows(mcnemar[split]), hide_index=True)
                    else:
                        st.info(f"No McNemar results for the {split} split.")
        else:
            st.dataframe(table_rows(mcnemar, "versus"), hide_index=True)
    else:
        st.info("This report has no `mcnemar` table.")
    st.markdown(f"#### Susceptibility classes (Jenks natural breaks) [{report.label}]")
    classes = report.data.get("classes")
    if isinstance(classes, dict) and classes:
        scalars = {k: v for k, v in classes.items() if not isinstance(v, (list, dict))}
        if scalars:
            st.markdown(", ".join(f"{k}: {_fmt(v)}" for k, v in scalars.items()))
        per_class = class_rows(classes)
        if per_class:
            st.dataframe(per_class, hide_index=True)
        for key, value in classes.items():
            if isinstance(value, (list, dict)) and not (per_class and key in per_class[0]):
                st.markdown(f"**{key}**")
                st.dataframe(table_rows(value, "class"), hide_index=True)
    elif isinstance(classes, list) and classes:
        st.dataframe(table_rows(classes), hide_index=True)
    else:
        st.info("This report has no `classes` (breaks and areas); run `slidemap map susceptibility`.")
    st.markdown(f"#### ROC / PR, success- and prediction-rate curves and other figures [{report.label}]")
    if not _images(report):
        st.info("No figures (PNG) saved beside this report.")
    _other_keys(report, _META | {"models", "mcnemar", "classes"})


def render_inventory(report: Report) -> None:
    import streamlit as st

    _badge(report)
    st.markdown(f"#### Detected inventory [{report.label}]")
    obj = report.data.get("object_level") if isinstance(report.data.get("object_level"), dict) else {}
    headline = [("areas kept", report.data.get("areas_kept")), ("object recall", obj.get("recall")),
                ("object precision", obj.get("precision")), ("known landslides", obj.get("known_landslides"))]
    headline = [(k, v) for k, v in headline if isinstance(v, (int, float))]
    if headline:
        for col, (name, value) in zip(st.columns(len(headline)), headline, strict=True):
            col.metric(f"{name} [{report.label}]", _fmt(value) if isinstance(value, float) else value)
    scalars = {k: v for k, v in report.data.items() if k not in _META and not isinstance(v, (list, dict))}
    if scalars:
        st.dataframe([{"quantity": k, "value": _text(v)} for k, v in scalars.items()], hide_index=True)
    for key, value in report.data.items():
        if key in _META or not isinstance(value, (list, dict)):
            continue
        st.markdown(f"**{key}**")
        st.dataframe(table_rows(value), hide_index=True)
    if not scalars and not any(isinstance(v, (list, dict)) for k, v in report.data.items() if k not in _META):
        st.info("This inventory report holds no summary values.")
    _images(report)


def render_evaluation(report: Report) -> None:
    """A trained model scored on data it was not trained on (``kind`` ``<family>-...-eval``): one
    ``metrics`` table, then its caveats as written."""
    import streamlit as st

    _badge(report)
    trained_on = report.data.get("model_trained_on")
    if trained_on is not None:
        st.caption(f"model trained on: {_short(trained_on)}")
    st.markdown(f"#### Scores [{report.label}]")
    metrics = report.data.get("metrics")
    if isinstance(metrics, dict) and metrics:
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        st.dataframe([{"metric": k, "value": _text(v)} for k, v in scalars.items()], hide_index=True)
        for key, value in metrics.items():
            if isinstance(value, (list, dict)):
                st.markdown(f"**{key}**")
                st.dataframe(table_rows(value), hide_index=True)
    else:
        st.info("This report has no `metrics`.")
    caveats = report.data.get("caveats")
    if isinstance(caveats, list) and caveats:
        st.markdown("**Caveats**\n" + "\n".join(f"- {c}" for c in caveats))
    _images(report)
    _other_keys(report, _META | {"metrics", "caveats", "model_trained_on"})


RENDERERS = {"unet": render_unet, "lsm": render_lsm, "inventory": render_inventory}


def renderer_for(report: Report, page: str) -> Any:
    """How a report is drawn: by its own kind (an ``-eval`` report is a table of scores), else its page's."""
    if report.kind.endswith("-eval") or (isinstance(report.data.get("metrics"), dict) and "models" not in report.data
                                         and report.kind not in RENDERERS):
        return render_evaluation
    return RENDERERS.get(report.kind, RENDERERS.get(page, render_inventory))
PAGE_TITLES = {
    "unet": "Inventory mapping (U-Net)",
    "lsm": "Susceptibility models",
    "inventory": "Detected inventory",
}


def render_kind(kind: str, reports: list[Report], versions: dict[str, str]) -> None:
    """One page: every report of ``kind``, real data apart from SYNTHETIC."""
    import streamlit as st

    st.header(PAGE_TITLES.get(kind, kind))
    broken = [r for r in reports if r.error]
    for r in broken:
        st.warning(f"Skipped a report: {r.error}")
    mine = [r for r in reports if r.page == kind and not r.error]
    if not mine:
        hint = {
            "unet": "`slidemap train unet REGION_DIR`",
            "lsm": "`slidemap train lsm REGION_DIR` and `slidemap map susceptibility REGION_DIR`",
            "inventory": "`slidemap inventory REGION_DIR`",
        }.get(kind, "the training commands")
        st.info(f"No {kind} report found yet. Run {hint}; its report appears here.")
        return
    shown = for_versions(mine, versions)
    if len(shown) < len(mine):
        st.caption(f"{len(mine) - len(shown)} report(s) of other model versions hidden (see the sidebar).")
    if not shown:
        st.info("No report of the chosen model versions; choose another version in the sidebar.")
        return
    real = [r for r in shown if r.synthetic is False]
    other = [r for r in shown if r.synthetic is not False]
    groups = [
        (f"REAL data ({len(real)})", real, "No real-data report of this kind. Real-data reports live in the repo's `reports/real/`."),
        (f"SYNTHETIC data ({len(other)})", other, "No synthetic report of this kind."),
    ]
    if not real:  # open on the tab that has something
        groups.reverse()
    tabs = st.tabs([label for label, _, _ in groups])
    for tab, (_, group, empty) in zip(tabs, groups, strict=True):
        with tab:
            if not group:
                st.info(empty)
                continue
            for i, report in enumerate(group):
                with st.expander(report.title, expanded=(i == 0)):
                    renderer_for(report, kind)(report)
