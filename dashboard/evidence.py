"""The evidence beside the map: how good the models behind the layers are.

For each role (susceptibility, detection) the server's ``/models`` answer gives every model's
blocked score with its 95 % interval; the newest version of each model name is drawn side by side
(Altair, Streamlit's own charting), the region's default marked. For the default susceptibility
model the saved report adds its ROC/PR and success/prediction-rate figures and the class table: each class's share of the area
beside its share of the known landslides (a good map puts few landslides in much low-class area).
"""

from __future__ import annotations

from typing import Any

from slidemap.dashboard.reports import Report, show_figure

ROLE_TITLES = {"susceptibility": "Susceptibility models", "detection": "Detectors"}
METRIC_NAMES = {"roc_auc": "blocked ROC-AUC", "f1": "blocked F1"}


def model_rows(models: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The newest version of each model name of ``role`` with its score and interval."""
    entries = ((models.get("roles") or {}).get(role) or {}).get("models") or []
    rows, seen = [], set()
    for m in entries:  # newest first
        if m.get("name") in seen or m.get("score") is None:
            continue
        seen.add(m["name"])
        lo, hi = (m.get("ci95") or [m["score"], m["score"]])[:2]
        rows.append({"model": m["name"], "version": m.get("version"), "score": float(m["score"]),
                     "low": float(lo), "high": float(hi), "default": bool(m.get("default")),
                     "skill": "yes" if m.get("has_skill") else "NO SKILL",
                     "metric": METRIC_NAMES.get(m.get("metric") or "", m.get("metric") or "score")})
    return rows


def models_chart(rows: list[dict[str, Any]]) -> Any:
    import altair as alt

    order = [r["model"] for r in sorted(rows, key=lambda r: -r["score"])]
    base = alt.Chart(alt.Data(values=rows)).encode(y=alt.Y("model:N", sort=order, title=None))
    interval = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", title=rows[0]["metric"] + " (95 % interval)", scale=alt.Scale(zero=False)), x2="high:Q")
    point = base.mark_point(filled=True, size=90).encode(
        x="score:Q",
        color=alt.condition(alt.datum.default, alt.value("#d73027"), alt.value("#4575b4")),
        tooltip=["model:N", "version:N", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                 alt.Tooltip("high:Q", format=".3f"), "skill:N", "default:N"],
    )
    return (interval + point).properties(height=32 * len(rows) + 30)


def default_report(reports: list[Report], version: str | None, kind: str = "lsm") -> Report | None:
    """The newest report of ``kind`` that names the default model's version; None when no report
    does (never another run's figures: they would be evidence for a different model)."""
    if not version:
        return None
    named = [r for r in reports if r.page == kind and not r.error and version in r.versions()]
    return named[0] if named else None


def class_rows(report: Report) -> list[dict[str, Any]]:
    classes = report.data.get("classes") or {}
    names, area, slides = classes.get("names") or [], classes.get("area_share") or [], classes.get("landslide_share")
    rows = []
    for i, name in enumerate(names):
        if i < len(area):
            rows.append({"class": name, "order": i, "share": float(area[i]), "of": "area"})
        if slides and i < len(slides):
            rows.append({"class": name, "order": i, "share": float(slides[i]), "of": "known landslides"})
    return rows


def classes_chart(rows: list[dict[str, Any]]) -> Any:
    import altair as alt

    order = [r["class"] for r in sorted(rows, key=lambda r: r["order"])]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("class:N", sort=list(dict.fromkeys(order)), title=None),
        xOffset="of:N",
        y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share"),
        color=alt.Color("of:N", title=None, scale=alt.Scale(range=["#9e9e9e", "#d73027"])),
        tooltip=["class:N", "of:N", alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=220)


def render(models: dict[str, Any] | None, reports: list[Report]) -> None:
    import streamlit as st

    st.subheader("Evidence")
    if not models:
        st.info("The tile server did not list its models; the evidence appears when it answers /models.")
        return
    synthetic = " (SYNTHETIC data)" if models.get("synthetic") else ""
    for role, title in ROLE_TITLES.items():
        rows = model_rows(models, role)
        if not rows:
            continue
        default = next((r for r in rows if r["default"]), None)
        st.markdown(f"**{title}{synthetic}**: default "
                    + (f"`{default['model']}` {default['score']:.3f} [{default['low']:.3f}, {default['high']:.3f}]"
                       if default else "none (no model has skill)"))
        st.altair_chart(models_chart(rows), width="stretch")
        if role != "susceptibility":
            continue
        report = default_report(reports, default["version"] if default else None)
        if report is None:
            continue
        crows = class_rows(report)
        if crows:
            st.caption(f"Classes of `{(report.data.get('classes') or {}).get('model', '')}` "
                       f"({report.label}): share of the area and of the known landslides per class")
            st.altair_chart(classes_chart(crows), width="stretch")
        # ROC/PR, then the success- and prediction-rate curves, of the blocked split
        for wanted in ("roc_pr_blocked", "rates_blocked"):
            figures = [f for f in report.images() if wanted in f.name]
            if figures:
                show_figure(figures[0], report, width=None)


def fetch_models(server: str) -> dict[str, Any] | None:
    from slidemap.dashboard.client import ServerFailed, ServerUnavailable, get_json

    try:
        return get_json(f"{server.rstrip('/')}/models")
    except (ServerUnavailable, ServerFailed):
        return None

