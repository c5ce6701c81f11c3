"""The Streamlit search app (``ppssl serve``): search by photo, attention/GradCAM overlays, evaluation, builds.

``ui.server.serve`` starts ``streamlit run ui/app.py``; the app's pages live in ``ui/views``. This package
imports ``engine`` and ``indexer`` only.
"""
