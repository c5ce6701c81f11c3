"""Search: upload a photo (or pick a gallery image), see the top-k with scores, labels, same-class badges.

The query lives in ``st.session_state[state.KEY_QUERY]``; a rerun (slider, click) re-searches with its
stored feature and never re-embeds the photo, let alone the gallery.
"""

from __future__ import annotations

import time
import uuid

import streamlit as st

from engine.embed import decode_side
from indexer.controls import ResultControls, apply_controls, default_collapse_cosine
from indexer.refine import RERANKERS, Refine
from ui import components, state
from ui.images import preview
from ui.query import run_query, search_vector
from ui.uploads import UPLOAD_TYPES, UploadError, read_upload

COLUMNS = 5  # result cards per row
PAGE = 25  # result cards per page (a large k is paged without searching again)
MAX_K = 1000  # the largest k offered
GALLERY_CHOICES = 2000  # at most this many gallery images offered in the picker
UNKNOWN = "(unknown)"
#: the Search page's re-ranking choices (label -> registered re-ranker), benchmarks/results/rerank.md; the first
#: is the default: alpha-QE (top 1), chosen on cub100's validation part (benchmarks/results/rerank_val.md)
DEFAULT_REFINE = "qe"
REFINE_CHOICES = {r.label: n for n, r in sorted(RERANKERS.items(), key=lambda item: item[0] != DEFAULT_REFINE)}

index_dir, index = components.require_index()
encoder = state.get_encoder(index_dir)
s = state.settings()

st.title("Search")
query = st.session_state.get(state.KEY_QUERY)
if query is not None and query.get("index_dir") != str(index_dir):
    query = st.session_state[state.KEY_QUERY] = None

for key in ("search_k", "search_source", "search_pick", "search_label", "search_refine", "search_min_score",
            "search_collapse"):
    components.restore(key)
for key in ("search_label", "search_page"):  # set by 'Search with this result' on the previous run
    if f"_next_{key}" in st.session_state:
        st.session_state[key] = st.session_state.pop(f"_next_{key}")
k_max = max(1, min(MAX_K, index.count))
if st.session_state.get("search_k", 0) > k_max:
    st.session_state["search_k"] = k_max
source_box = st.container()  # drawn first, filled after k is known
ctl_k, ctl_refine, ctl_label = st.columns([1, 1, 2])
k = components.keep("search_k", ctl_k.number_input(f"Results (k, up to {k_max:,})", 1, k_max, min(10, k_max),
                                                   key="search_k"))
refine_name = components.keep("search_refine", ctl_refine.selectbox(
    "Re-ranking", [lbl for lbl, n in REFINE_CHOICES.items() if index.cache_dir or not RERANKERS[n].needs_cache],
    key="search_refine",
    help="Query-time re-ranking of the results (measured in benchmarks/results/rerank.md)"))
refine = Refine(method=REFINE_CHOICES[refine_name])
with st.expander("Result controls: score threshold, near-duplicates"):
    c1, c2 = st.columns(2)
    min_score = components.keep("search_min_score", c1.slider(
        "Minimum score (cosine)", -1.0, 1.0, -1.0, 0.01, key="search_min_score",
        help="Hide results scoring below this; -1 shows everything"))
    collapse = components.keep("search_collapse", c2.checkbox(
        "Collapse near-duplicates", value=False, key="search_collapse",
        help=f"Hide a result that is the same file as, or at cosine {default_collapse_cosine(index)} or more to, a "
             "higher-ranked one (threshold chosen on cub100's validation part: benchmarks/results/collapse.md)"))
controls = ResultControls(min_score=None if min_score <= -1.0 else float(min_score), collapse=bool(collapse))
# with collapse on, more are fetched so that k remain after near-duplicates go
fetch = min(index.count, 2 * k + 10) if controls.collapse else k
with source_box:
    source = components.keep("search_source", st.radio(
        "Query from", ["Upload a photo", "Pick from the gallery"], horizontal=True, key="search_source",
        label_visibility="collapsed"))


def _new_query(**fields) -> dict:
    fields.update(key=uuid.uuid4().hex, index_dir=str(index_dir))
    st.session_state[state.KEY_QUERY] = fields
    st.session_state.pop(state.KEY_SELECTED, None)
    return fields


with source_box:
    if source == "Upload a photo":
        upload = st.file_uploader(
            f"Query photo: JPEG, PNG, WebP, BMP or GIF (first frame), up to {s.max_upload_mb} MiB. "
            "Drag and drop works.",
            type=list(UPLOAD_TYPES), key="search_upload")
        if upload is not None and st.session_state.get("search_upload_id") != upload.file_id:
            st.session_state["search_upload_id"] = upload.file_id
            st.session_state.pop("search_upload_error", None)
            t0 = time.perf_counter()
            try:
                q = read_upload(upload.name, upload.getvalue(), max_bytes=s.max_upload_bytes,
                                max_pixels=s.max_pixels, min_side=decode_side(encoder))
            except UploadError as exc:
                st.session_state["search_upload_error"] = str(exc)
                st.session_state.pop(state.KEY_QUERY, None)
                query = None
            else:
                match = state.gallery_match(q.sha256, index_dir)
                decode_ms = (time.perf_counter() - t0) * 1e3
                exclude = (match[0],) if match else ()
                res = run_query(index, encoder, q.image, k=fetch, exclude=exclude, refine=refine)
                label = match[1] if match else None
                st.session_state["search_label"] = label if label is not None else UNKNOWN
                query = _new_query(source="upload", name=q.name, image=q.image, feature=res.feature, hits=res.hits,
                                   k=k, fetched=fetch, refine=refine.method, exclude=exclude, label=label, decode_ms=decode_ms,
                                   embed_ms=res.embed_ms,
                                   search_ms=res.search_ms,
                                   note=(f"identical to gallery image #{match[0]}, left out of the results"
                                         if match else ""))
        if upload is None:
            st.session_state.pop("search_upload_id", None)
            st.session_state.pop("search_upload_error", None)
        if st.session_state.get("search_upload_error"):
            st.error(st.session_state["search_upload_error"])
    else:
        records = state.gallery_records(index_dir)
        step = max(1, len(records) // GALLERY_CHOICES)
        choices = [r["id"] for r in records[::step]]
        by_id = {r["id"]: r for r in records}
        if not choices:
            st.info("The gallery is empty.")
        else:
            if "search_pick" in st.session_state and st.session_state["search_pick"] not in choices:
                del st.session_state["search_pick"]
            pick = components.keep("search_pick", st.selectbox(
                "Gallery image", choices, key="search_pick",
                format_func=lambda i: f"#{i} · {by_id[i].get('label') or 'unlabelled'} · {by_id[i]['path']}"))
            c1, c2 = st.columns(2)
            go = c1.button("Search with this image", type="primary", key="search_pick_go")
            if c2.button("Random gallery image", key="search_pick_random"):
                import random

                pick = random.choice(choices)
                go = True
            if go and pick is not None:
                rec = by_id[pick]
                image = state.load_gallery_image(index, rec["path"])
                if image is None:
                    st.error(f"gallery image `{rec['path']}` is missing or unreadable")
                else:
                    feature = index.vectors([pick])[0]
                    res = run_query(index, encoder, feature=feature, k=fetch, exclude=(pick,), refine=refine)
                    st.session_state["search_label"] = rec.get("label") or UNKNOWN
                    query = _new_query(source="gallery", name=rec["path"], image=image, feature=res.feature,
                                       hits=res.hits, k=k, fetched=fetch, refine=refine.method, exclude=(pick,),
                                       label=rec.get("label"), decode_ms=0.0,
                                       embed_ms=0.0, search_ms=res.search_ms,
                                       note=f"gallery image #{pick} (stored vector; left out of the results)")

if query is None:
    st.info("Upload a photo or pick a gallery image to search the index "
            f"({index.count:,} images).")
    st.stop()

# A changed k or re-ranking re-searches with the stored feature (no re-embedding).
if query.get("fetched") != fetch or query.get("refine", "none") != refine.method:
    t0 = time.perf_counter()
    query["hits"] = search_vector(index, query["feature"], fetch, tuple(query["exclude"]), refine)
    query["search_ms"], query["fetched"], query["refine"] = (time.perf_counter() - t0) * 1e3, fetch, refine.method
shown, dropped = apply_controls(index, query["hits"], controls)
shown = shown[:k]

labels = state.class_names(index_dir)
if labels:
    if st.session_state.get("search_label") not in [UNKNOWN, *labels]:
        st.session_state["search_label"] = UNKNOWN
    chosen = components.keep("search_label", ctl_label.selectbox("Query class (for the same-class badges)",
                                                                 [UNKNOWN, *labels], key="search_label"))
    query["label"] = None if chosen == UNKNOWN else chosen

left, right = st.columns([1, 3])
with left:
    st.image(preview(query["image"]), caption=query["name"], width="stretch")
with right:
    total = query["decode_ms"] + query["embed_ms"] + query["search_ms"]
    st.metric("Query latency (upload → results)", f"{total:.0f} ms")
    st.caption(f"decode & duplicate check {query['decode_ms']:.0f} ms · embed {query['embed_ms']:.0f} ms · "
               f"search {query['search_ms']:.1f} ms over {index.count:,} images")
    if query.get("note"):
        st.caption(query["note"])
    if query["label"] is not None:
        same = sum(h.label == query["label"] for h in shown)
        st.caption(f"{same} of {len(shown)} results share the query's class `{query['label']}`")
    if dropped["below_min_score"] or dropped["collapsed"]:
        st.caption(f"hidden: {dropped['below_min_score']} below the minimum score, {dropped['collapsed']} "
                   "near-duplicates")


def _search_with(hit) -> None:
    """'Search with this result': the result's stored vector becomes the query (no upload, no embedding)."""
    image = state.load_gallery_image(index, hit.path)
    if image is None:
        st.error(f"gallery image `{hit.path}` is missing or unreadable")
        return
    res = run_query(index, encoder, feature=index.vectors([hit.id])[0], k=fetch, exclude=(hit.id,), refine=refine)
    st.session_state["_next_search_label"] = hit.label or UNKNOWN  # applied before the widgets on the rerun
    _new_query(source="gallery", name=hit.path, image=image, feature=res.feature, hits=res.hits, k=k, fetched=fetch,
               refine=refine.method, exclude=(hit.id,), label=hit.label, decode_ms=0.0, embed_ms=0.0,
               search_ms=res.search_ms, note=f"result #{hit.id} (stored vector; left out of the results)")
    st.session_state["_next_search_page"] = 1
    st.rerun()


pages = max(1, -(-len(shown) // PAGE))
if st.session_state.get("search_page", 1) > pages:
    st.session_state["search_page"] = 1
page = st.number_input(f"Page (of {pages}, {PAGE} results each)", 1, pages, 1, key="search_page") if pages > 1 else 1
first = (page - 1) * PAGE
st.subheader(f"Top {len(shown)}" + (f" · results {first + 1}-{min(first + PAGE, len(shown))}" if pages > 1 else ""))
for row in range(first, min(first + PAGE, len(shown)), COLUMNS):
    cols = st.columns(COLUMNS)
    for col, (rank, hit) in zip(cols, enumerate(shown[row:row + COLUMNS], start=row + 1)):
        with col:
            components.show_gallery_image(hit.path, index_dir=index_dir)
            st.markdown(components.hit_caption(rank, hit, query["label"]))
            b1, b2 = st.columns(2)
            if b1.button("Open", key=f"open_{hit.id}", width="stretch"):
                st.session_state[state.KEY_SELECTED] = hit.id
            if b2.button("Search", key=f"again_{hit.id}", width="stretch", help="Search with this result"):
                _search_with(hit)

selected = st.session_state.get(state.KEY_SELECTED)
hit_by_id = {h.id: h for h in shown}
if selected in hit_by_id:
    hit = hit_by_id[selected]
    st.divider()
    st.subheader(f"Result #{list(hit_by_id).index(selected) + 1}: {hit.label or 'unlabelled'}")
    big, nbrs = st.columns([2, 3])
    with big:
        image = state.load_gallery_image(index, hit.path)
        if image is None:
            st.warning(f"image unavailable: `{hit.path}`")
        else:
            st.image(preview(image, 1024), caption=f"{hit.path} · score {hit.score:.3f}", width="stretch")
        if st.button("Close", key="close_selected"):
            st.session_state.pop(state.KEY_SELECTED, None)
            st.rerun()
    with nbrs:
        st.markdown("**Its own nearest neighbours**")
        neighbours = search_vector(index, index.vectors([hit.id])[0], 6, (hit.id,))
        cols = st.columns(3)
        for i, n in enumerate(neighbours):
            with cols[i % 3]:
                components.show_gallery_image(n.path, index_dir=index_dir)
                st.markdown(components.hit_caption(i + 1, n, hit.label))
