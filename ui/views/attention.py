"""Attention: why the results matched — the model's own attention map A and a retrieval GradCAM.

For each result, GradCAM explains ``query · f(result)`` on the result's feature map; for the query it
explains ``f(query) · top-1`` on the query's map. Maps are computed once per query and kept in the
session; the opacity slider only re-blends them.
"""

from __future__ import annotations

import time

import streamlit as st

from engine.gradcam import attention_maps, display_crop, overlay, retrieval_gradcam
from ui import components, state

DISPLAY = 224  # side of the displayed crops and maps

index_dir, index = components.require_index()
encoder = state.get_encoder(index_dir)

st.title("Attention")
query = st.session_state.get(state.KEY_QUERY)
if not query or query.get("index_dir") != str(index_dir) or not query.get("hits"):
    st.info("Search first: the overlays explain the current query and its results.")
    st.page_link("views/search.py", label="Go to Search", icon=":material/search:")
    st.stop()

stages = list(encoder.backbone.stages)  # shallow to deep
for key in ("cam_alpha", "cam_n", "cam_layer"):
    components.restore(key)
if st.session_state.get("cam_n", 0) > len(query["hits"]):
    st.session_state["cam_n"] = len(query["hits"])
c1, c2, c3 = st.columns(3)
alpha = components.keep("cam_alpha", c1.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha"))
n = components.keep("cam_n", c2.slider("Results to explain", 1, len(query["hits"]), min(5, len(query["hits"])),
                                       key="cam_n"))
layer = components.keep("cam_layer", c3.selectbox(
    "GradCAM layer", stages, index=len(stages) - 1, key="cam_layer",
    help="the backbone's stages, shallow to deep; the last is the feature map the retrieval feature pools"))
if encoder.config.pooling != "attention":
    st.caption(f"This index's encoder pools with `{encoder.config.pooling}`: its attention head does not shape "
               "the retrieval feature, so map A is shown for reference only.")

hits = query["hits"][:n]
cache_key = (query["key"], tuple(h.id for h in hits), layer)
maps = st.session_state.get("cam_maps")
if not maps or maps["key"] != cache_key:
    images = [state.load_gallery_image(index, h.path) for h in hits]
    ok = [i for i, im in enumerate(images) if im is not None]
    cam = state.get_cam_model(index_dir)
    with st.spinner(f"Computing GradCAM for {len(ok)} results…"):
        t0 = time.perf_counter()
        attn = attention_maps(encoder, [query["image"]] + [images[i] for i in ok], DISPLAY)
        attn_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        cams = retrieval_gradcam(cam, query["feature"], [images[i] for i in ok], layer, DISPLAY)
        cam_ms = (time.perf_counter() - t0) * 1e3
        top1 = index.vectors([hits[0].id])[0]
        qcam = retrieval_gradcam(cam, top1, [query["image"]], layer, DISPLAY)[0]
    in_size, view = encoder.config.input_size, encoder.config.view
    maps = {
        "key": cache_key, "attn_ms": attn_ms, "cam_ms": cam_ms,
        "query": (display_crop(query["image"], in_size, DISPLAY, view, encoder.config.mean), attn[0], qcam),
        "results": {i: (display_crop(images[i], in_size, DISPLAY, view, encoder.config.mean), attn[1 + j], cams[j]) for j, i in enumerate(ok)},
    }
    st.session_state["cam_maps"] = maps

st.caption(f"GradCAM for the top-{len(maps['results'])}: {maps['cam_ms']:.0f} ms · "
           f"attention maps: {maps['attn_ms']:.0f} ms (layer `{layer}`, CPU threads shared with the server)")


def _row(title: str, crop, attn, cam, caption: str) -> None:
    info, a, b, c = st.columns([1.2, 1, 1, 1])
    info.markdown(title)
    a.image((crop * 255).astype("uint8"), caption="image (model's crop)", width="stretch")
    b.image(overlay(crop, attn, alpha), caption="attention map A", width="stretch")
    c.image(overlay(crop, cam, alpha), caption=caption, width="stretch")


_row(f"**Query**  \n{query['name']}", *maps["query"], "GradCAM: similarity to result #1")
for rank, hit in enumerate(hits, start=1):
    same = None if query["label"] is None or hit.label is None else hit.label == query["label"]
    title = f"**#{rank}** · score {hit.score:.3f}  \n{hit.label or 'unlabelled'}  \n{components.badge(same)}"
    if rank - 1 not in maps["results"]:
        st.markdown(title)
        st.warning(f"image unavailable: `{hit.path}`")
        continue
    _row(title, *maps["results"][rank - 1], "GradCAM: similarity to the query")
