"""Image: one image with its captions (phrases highlighted), Entities boxes, generated captions (with their grounded
phrases' boxes when stored), tags, nearest neighbours, grounding a phrase on it, and grounding every phrase of a
caption (one of its own or a typed one)."""

import numpy as np
import streamlit as st

from grounding.overlay import render_overlay
from indexer import MAX_QUERY_CHARS
from ui.app import data, resources
from ui.app.views import grounded_caption, hit_grid, tag_line
from warehouse import Catalog, load_image

workdir = resources.workdir()
root = str(workdir.root)
model = resources.model_id(root)
st.title("Image")
if "open_image_id" in st.session_state:  # "open" on another page
    st.session_state["image_page_id"] = st.session_state.pop("open_image_id")
elif "image_page_id" not in st.session_state:
    st.session_state["image_page_id"] = data.first_image_id(workdir) or 0
image_id = int(st.number_input("image id", min_value=0, step=1, key="image_page_id"))
info = resources.details(root, [image_id]).get(image_id)
if info is None:
    st.stop()
with Catalog.open(workdir, read_only=True) as catalog:
    phrases = catalog.grounding_rows(image_ids=[image_id])
    generated = catalog.generated_captions([image_id]).get(image_id, [])
    tags = catalog.tags_of([image_id]).get(image_id, [])
    captions = catalog.caption_rows(image_ids=[image_id])
image = load_image(info["path"])
about = (f"image {image_id} · {info['split'] or 'no split'} · {info['width']}×{info['height']} · "
         f"{info['dataset']} {info['key']}")
box_sources = {"annotated phrases": None} | {f"generated caption ({g['model_id'][:8]})": g for g in generated
                                             if any(p.box is not None for p in g["phrases"])}
boxes_column, ground_column, text_column = st.columns([4, 4, 5])
with boxes_column:
    shown = None
    if len(box_sources) > 1:  # generated phrases were grounded: their boxes or the annotated ones
        annotated = any(p.boxes for p in phrases)
        shown = box_sources[st.radio("boxes of", list(box_sources), index=0 if annotated else 1, horizontal=True)]
    if shown is None:
        st.image(data.boxes_overlay(image, phrases), width="stretch", caption=about)
        legend = data.type_legend(p.types for p in phrases if p.boxes)
    else:
        located = [p for p in shown["phrases"] if p.box is not None]
        st.image(data.phrase_boxes_overlay(image, located), width="stretch",
                 caption=f"{about} · the generated caption's phrases, {data.phrases_source(shown['phrases'])}")
        legend = data.type_legend(p.types for p in located)
    if legend:
        st.markdown(legend, unsafe_allow_html=True)
with ground_column:
    phrase = st.text_input("Ground a phrase", key="image_phrase", placeholder="the man in the red jacket")
    if phrase.strip():
        try:
            grounding = resources.grounder(root, model).ground(phrase, image_id)
        except ValueError as e:
            st.error(str(e))
        else:
            st.image(render_overlay(image, grounding, max_side=512), width="stretch",
                     caption=f"“{phrase}”: best patch {grounding.score:.3f}, {len(grounding.boxes)} boxes")
    else:
        st.caption("Type a phrase to see where the model finds it: a heatmap of patch similarities and boxes.")
with text_column:
    st.subheader("Captions")
    by_caption: dict[int, list] = {}
    for p in phrases:
        by_caption.setdefault(p.caption_id, []).append(p)
    for caption_id, _, text in captions:
        st.markdown(data.highlighted_caption(text, by_caption.get(caption_id, [])), unsafe_allow_html=True)
    if not captions:
        st.caption("no human captions")
    for g in generated:
        st.markdown(f"**generated** by captioner {g['model_id'][:8]}: "
                    + data.highlighted_caption(g["text"], g["phrases"]), unsafe_allow_html=True)
        st.caption(data.phrases_source(g["phrases"]))
    if tags:
        st.subheader("Tags")
        method_label = {"fusion": "fusion (caption-assisted)"} if captions else {}  # it read these very captions
        st.dataframe([{"tag": t["keyword"], "score": round(t["score"], 3),
                       "method": method_label.get(t["method"], t["method"])} for t in tags],
                     hide_index=True, width="stretch", height=min(240, 38 + 35 * len(tags)))
    else:
        fitted = next((f for f in (resources.tagger(root, m, model) for m in ("probe", "knn")) if f), None)
        if fitted is not None:
            tagger, tag_data = fitted
            ids, vectors = tag_data.image_vectors(np.array([image_id], dtype=np.int64))
            if len(ids):
                st.subheader("Tags")
                st.markdown(f"**{tagger.method}** (none stored for this image, computed now): "
                            + tag_line(tagger, tag_data, vectors, ids))

st.subheader("Ground a caption")
chunker = resources.chunker(root)
if chunker is None:
    st.info(resources.CHUNKER_HELP)
else:
    TYPED = "(type a caption)"
    pick_column, result_column = st.columns([4, 5])
    with pick_column:
        own = dict.fromkeys([t for _, _, t in captions] + [g["text"] for g in generated])  # in order, once each
        picked = st.selectbox("caption", [TYPED, *own], help="one of this image's captions, or one you type")
        text = st.text_input("caption to ground", key="image_caption", max_chars=MAX_QUERY_CHARS,
                             placeholder="a man in a red jacket walks a dog") if picked == TYPED else picked
    with result_column:
        if text.strip():
            grounded_caption(root, model, chunker, text, image, image_id)
        else:
            st.caption("Pick or type a caption: the chunker finds its phrases and the model locates each one, "
                       "underlined and boxed in the colour of its type.")

st.subheader("Nearest neighbours")
k, where = resources.filters_sidebar(root, "image")
try:
    hit_grid(resources.searcher(root, model).image_to_image(image_id, k=k, where=where), key="neighbours", root=root)
except (ValueError, FileNotFoundError) as e:
    st.error(str(e))
