"""Evaluate: leave-one-out retrieval quality of the index (``indexer.evaluate_index``).

Each labelled gallery image queries the rest; rank-k, mAP and MAP@R come from the indexer's
evaluation (itself checked against engine.metrics), cached per index version.
"""

from __future__ import annotations

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

summary = report["summary"]
cols = st.columns(5)
for col, key in zip(cols, ("rank-1", "rank-5", "rank-10", "mAP", "MAP@R")):
    value = summary.get(key)
    col.metric(key, "n/a" if value is None else f"{100 * value:.1f} %")

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
