"""Evaluate: leave-one-out retrieval quality of the index (``indexer.evaluate_index``).

Each labelled gallery image queries the rest; rank-k, mAP and MAP@R come from the indexer's
evaluation (itself checked against engine.metrics), cached per index version.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.errors import PPSSLError
from ui import components, state

PAIRS_SHOWN = 6  # confused class pairs drawn with example images

index_dir, index = components.require_index()
st.title("Evaluate")
st.caption(f"Leave-one-out over the {index.count:,} gallery images: each labelled image is a query against all "
           "the others.")

if not state.class_names(index_dir):
    st.info("The gallery has no class labels (images were indexed from a flat folder), so there is nothing "
            "to score. Index a folder with one sub-folder per class to evaluate.")
    st.stop()

try:
    with st.spinner("Evaluating the index (once per index version)…"):
        report = state.eval_report(index_dir)
except PPSSLError as exc:
    st.error(f"Evaluation failed: {exc}")
    st.stop()

METRICS = ("rank-1", "rank-5", "rank-10", "mAP", "MAP@R")
partner = state.comparison_partner(Path(index_dir))
compare_dir, why = partner if partner else (None, None)
comparison = None
if compare_dir is not None:
    try:
        with st.spinner("Evaluating both over their common images…"):
            comparison = state.compare_report(index_dir, compare_dir)
    except PPSSLError as exc:
        st.warning(f"Comparison with {compare_dir} unavailable: {exc}")
names = (comparison or {}).get("names") or (Path(index_dir).name, Path(compare_dir).name if compare_dir else "")

summary = report["summary"]
other = comparison["other"]["summary"] if comparison else None
cols = st.columns(5)
for col, key in zip(cols, METRICS):
    value = summary.get(key)
    delta = None
    if other is not None and comparison["only_index"] == 0 and other.get(key) is not None and value is not None:
        delta = f"{100 * (value - other[key]):+.1f} points vs {names[1]}"
    col.metric(key, "n/a" if value is None else f"{100 * value:.1f} %", delta=delta)

if comparison:
    name, other_name = names
    st.subheader(f"{name} vs {other_name}")
    st.caption(f"Compared with {why}. Both scored leave-one-out over the {comparison['common']:,} labelled images "
               "they share (same file content), so the difference is the encoders'. "
               + (f"{comparison['only_index']} images only in this index and {comparison['only_other']} only in "
                  f"{other_name} are left out of this comparison." if comparison["only_index"]
                  or comparison["only_other"] else ""))
    mine = comparison["index"]["summary"]
    table = pd.DataFrame({"metric": list(METRICS),
                          f"{name} (%)": [round(100 * mine[k], 1) for k in METRICS],
                          f"{other_name} (%)": [round(100 * other[k], 1) for k in METRICS],
                          "difference (points)": [round(100 * (mine[k] - other[k]), 1) for k in METRICS]})
    st.dataframe(table, hide_index=True, width="stretch")
    curves = {name: comparison["index"]["rank_curve"], other_name: comparison["other"]["rank_curve"]}
    n = min(len(c) for c in curves.values())
    st.line_chart(pd.DataFrame({"k": range(1, n + 1), **{k: [100 * v for v in c[:n]] for k, c in curves.items()}}),
                  x="k", y=list(curves), y_label="rank-k accuracy (%)")
else:
    curve = report.get("rank_curve") or []
    if curve:
        st.subheader("Rank-k accuracy")
        frame = pd.DataFrame({"k": range(1, len(curve) + 1), "rank-k accuracy (%)": [100 * v for v in curve]})
        st.line_chart(frame, x="k", y="rank-k accuracy (%)")

st.subheader("Per class, worst first")
per_class = pd.DataFrame(report.get("per_class") or [])
if not per_class.empty:
    metric_cols = [c for c in per_class.columns if c not in ("label", "count")]
    for key in metric_cols:
        per_class[key] = (100 * per_class[key].astype(float)).round(1)
    st.dataframe(per_class, hide_index=True, width="stretch",
                 column_config={key: st.column_config.NumberColumn(f"{key} (%)") for key in metric_cols})

pairs = report.get("confused_pairs") or []
st.subheader("Most-confused class pairs")
if not pairs:
    st.caption("No query's nearest neighbour came from another class.")
shown = pairs[:PAIRS_SHOWN]
for row in range(0, len(shown), 2):
    for col, pair in zip(st.columns(2, gap="large"), shown[row:row + 2]):
        label_a, label_b, count, q_path, r_path = (list(pair) + [None] * 5)[:5]
        with col:
            st.markdown(f"**{label_a}** → **{label_b}**  \n{count} quer{'y' if count == 1 else 'ies'} "
                        "whose nearest neighbour had the other class")
            a, b = st.columns(2)
            with a:
                if q_path:
                    components.show_gallery_image(q_path, caption=f"query ({label_a})", size=256,
                                                  index_dir=index_dir)
            with b:
                if r_path:
                    components.show_gallery_image(r_path, caption=f"its top-1 ({label_b})", size=256,
                                                  index_dir=index_dir)
