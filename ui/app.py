"""Streamlit entry point: ``streamlit run ui/app.py`` (started by ``ppssl serve`` via ``ui.server``).

Server-side settings come from the environment (``ui.settings``); pages live in ``ui/views``.
"""

import streamlit as st

from engine.runtime import tune_allocator
from ui import components

tune_allocator()  # the query path's forward pass and GradCAM (engine/runtime.py); idempotent across reruns

st.set_page_config(page_title="PP-SSL image search", page_icon=":material/image_search:", layout="wide")

PAGES = [
    st.Page("views/search.py", title="Search", icon=":material/search:", default=True),
    st.Page("views/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/leaderboard:"),
    st.Page("views/build.py", title="Build", icon=":material/build:"),
]

page = st.navigation(PAGES)
components.sidebar()
page.run()
