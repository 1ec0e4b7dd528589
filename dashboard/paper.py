"""Paper comparison: our saved reports beside Zhang et al. (2024), Tables 4, 6 and 7.

The paper's figures are its published numbers (``shared/method.md``), from their own data in
Zhangjiajie on a random split; they are fixed reference values, not ours. Our side is read from the
saved reports and each is labelled REAL or SYNTHETIC: a synthetic demo region says nothing about the
paper's claims, it only shows the pipeline runs end to end.
"""

from __future__ import annotations

from typing import Any

from slidemap.dashboard.reports import Report, metrics_rows

CITATION = (
    "Zhang B., Tang J., Huan Y., Song L., Shah S.Y.A., Wang L. (2024), Geomatics, Natural Hazards and "
    "Risk 15(1), 2383309, doi:10.1080/19475705.2024.2383309; Zhangjiajie, random 80/20 split, their data"
)

# Table 4: the four U-Net models on their test split.
TABLE4: list[dict[str, Any]] = [
    {"model": "Model-1", "loss, epochs": "focal, 50", "accuracy": 0.935, "precision": 0.995, "recall": 0.754, "f1": 0.820, "miou": 0.735},
    {"model": "Model-2", "loss, epochs": "BCE, 50", "accuracy": 0.498, "precision": 0.981, "recall": 0.499, "f1": 0.498, "miou": 0.492},
    {"model": "Model-3", "loss, epochs": "focal, 100", "accuracy": 0.875, "precision": 0.993, "recall": 0.696, "f1": 0.758, "miou": 0.671},
    {"model": "Model-4", "loss, epochs": "BCE, 100", "accuracy": 0.501, "precision": 0.961, "recall": 0.501, "f1": 0.500, "miou": 0.485},
]
# Table 6: susceptibility models on their test split; "ours" is our report's model name.
TABLE6: list[dict[str, Any]] = [
    {"model": "small (12)", "ours": "small", "accuracy": 0.97, "precision": 0.90, "recall": 0.51, "f1": 0.51, "auc": 0.9262},
    {"model": "medium (17)", "ours": "medium", "accuracy": 0.97, "precision": 0.99, "recall": 0.51, "f1": 0.50, "auc": 0.9311},
    {"model": "large (22)", "ours": "large", "accuracy": 0.98, "precision": 0.99, "recall": 0.50, "f1": 0.50, "auc": 0.9331},
    {"model": "multi-scale", "ours": "multiscale", "accuracy": 0.98, "precision": 0.83, "recall": 0.57, "f1": 0.61, "auc": 0.9379},
    {"model": "GBDT + LR", "ours": "gbdt_lr", "accuracy": 0.81, "precision": 0.80, "recall": 0.57, "f1": 0.67, "auc": 0.8168},
]
# Table 7: McNemar's chi-squared of the multi-scale model against each other model; all p < 0.001.
TABLE7: list[dict[str, Any]] = [
    {"versus": "small", "chi2": 60.220, "p": "< 0.001"},
    {"versus": "medium", "chi2": 63.856, "p": "< 0.001"},
    {"versus": "large", "chi2": 11.811, "p": "< 0.001"},
    {"versus": "gbdt_lr", "chi2": 12.397, "p": "< 0.001"},
]

_CHI2_KEYS = ("chi2", "chi_squared", "statistic", "chi2_stat", "chisq")
_P_KEYS = ("p", "p_value", "pvalue", "p-value")


def _pick(entry: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in entry:
            return entry[key]
    return None


def mcnemar_by_split(mcnemar: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{split: {versus: {chi2, p}}}`` from the report's McNemar block, split-nested or flat ("report")."""
    if not isinstance(mcnemar, dict):
        return {}
    nested = {s: v for s, v in mcnemar.items() if s in ("random", "blocked") and isinstance(v, dict)}
    groups = nested or {"report": mcnemar}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split, table in groups.items():
        rows = {}
        for versus, entry in table.items():
            if isinstance(entry, dict):
                rows[str(versus)] = {"chi2": _pick(entry, _CHI2_KEYS), "p": _pick(entry, _P_KEYS)}
        out[split] = rows
    return out


def _ours_table6(report: Report) -> list[dict[str, Any]]:
    models = report.data.get("models") if isinstance(report.data.get("models"), dict) else {}
    rows = []
    for paper in TABLE6:
        row: dict[str, Any] = {"model": paper["model"], "paper AUC": paper["auc"]}
        entry = models.get(paper["ours"], {}) if isinstance(models, dict) else {}
        for split in ("random", "blocked"):
            m = entry.get(split) if isinstance(entry, dict) else None
            row[f"ours {split} ROC-AUC"] = m.get("roc_auc") if isinstance(m, dict) else None
            row[f"ours {split} F1"] = m.get("f1") if isinstance(m, dict) else None
        rows.append(row)
    return rows


def auc_chart(rows: list[dict[str, Any]], label: str) -> Any:
    """The paper's ROC-AUC beside ours (random and blocked split) per model, as grouped bars."""
    import altair as alt

    values = []
    for row in rows:
        for source, key in (("paper", "paper AUC"), (f"ours, random [{label}]", "ours random ROC-AUC"),
                            (f"ours, blocked [{label}]", "ours blocked ROC-AUC")):
            if isinstance(row.get(key), (int, float)):
                values.append({"model": row["model"], "ROC-AUC": float(row[key]), "source": source})
    if not any(v["source"] != "paper" for v in values):
        return None
    return alt.Chart(alt.Data(values=values)).mark_bar(clip=True).encode(
        x=alt.X("model:N", title=None, sort=[r["model"] for r in rows]),
        xOffset="source:N",
        y=alt.Y("ROC-AUC:Q", scale=alt.Scale(domain=[0.5, 1.0]), title="ROC-AUC"),
        color=alt.Color("source:N", title=None),
        tooltip=["model:N", "source:N", alt.Tooltip("ROC-AUC:Q", format=".3f")],
    ).properties(height=260)


def _ours_table7(report: Report) -> list[dict[str, Any]]:
    ours = mcnemar_by_split(report.data.get("mcnemar"))
    rows = []
    for paper in TABLE7:
        row: dict[str, Any] = {"versus": paper["versus"], "paper chi2": paper["chi2"], "paper p": paper["p"]}
        for split, table in ours.items():
            entry = table.get(paper["versus"], {})
            row[f"ours {split} chi2"] = entry.get("chi2")
            row[f"ours {split} p"] = entry.get("p")
        rows.append(row)
    return rows


def _latest_by_label(reports: list[Report], kind: str) -> list[Report]:
    """The newest REAL and the newest SYNTHETIC (or unmarked) report of a kind."""
    picked: dict[str, Report] = {}
    for report in reports:  # newest first
        if report.kind == kind and not report.error:
            picked.setdefault(report.label, report)
    return [picked[label] for label in ("REAL", "SYNTHETIC", "UNMARKED") if label in picked]


def render(reports: list[Report]) -> None:
    import streamlit as st

    st.header("Paper comparison")
    st.caption(f"Paper: {CITATION}. Their data is not public: we reproduce the method, not their numbers.")

    st.subheader("Table 4: U-Net models (inventory mapping)")
    left, right = st.columns(2)
    with left:
        st.markdown("**Paper (published, their test split)**")
        st.dataframe(TABLE4, hide_index=True)
    with right:
        unet = _latest_by_label(reports, "unet")
        if not unet:
            st.info("No U-Net report yet: run `slidemap train unet REGION_DIR`.")
        for report in unet:
            st.markdown(f"**Ours [{report.label}]** {report.run_id}")
            for split in ("random", "blocked"):
                rows, _ = metrics_rows(report.data.get("models"), split, ("accuracy", "precision", "recall", "f1", "miou"),
                                       extras=False)
                st.caption(f"{split} split")
                if rows:
                    st.dataframe(rows, hide_index=True)
                else:
                    st.info(f"No {split}-split results in this report.")
    st.caption("Paper F1 is not the harmonic mean of its own precision and recall; ours is the landslide "
               "class's F1, pixels pooled over the test set; mIoU = mean of landslide and background IoU.")

    lsm = _latest_by_label(reports, "lsm")
    # Tables 6 and 7: ours carry the paper's column beside each split, so they get the full width.
    st.subheader("Table 6: susceptibility models")
    st.markdown("**Paper (published, their test split)**")
    st.dataframe([{k: v for k, v in row.items() if k != "ours"} for row in TABLE6], hide_index=True)
    if not lsm:
        st.info("No susceptibility report yet: run `slidemap train lsm REGION_DIR`.")
    for report in lsm:
        st.markdown(f"**Ours [{report.label}]** {report.run_id}: the paper's AUC beside ours on both splits")
        rows = _ours_table6(report)
        chart = auc_chart(rows, report.label)
        if chart is not None:
            st.altair_chart(chart, width="stretch")
        st.dataframe(rows, hide_index=True)

    st.subheader("Table 7: McNemar's test, multi-scale vs each model")
    st.markdown("**Paper (published)**")
    st.dataframe(TABLE7, hide_index=True)
    if not lsm:
        st.info("No susceptibility report yet, so no McNemar table of ours.")
    for report in lsm:
        st.markdown(f"**Ours [{report.label}]** {report.run_id}: continuity-corrected chi-squared and p per split")
        if not report.data.get("mcnemar"):
            st.info("This report has no `mcnemar` table.")
            continue
        st.dataframe(_ours_table7(report), hide_index=True)
