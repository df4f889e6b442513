"""Upload: any image -> similar images, predicted tags, a generated caption (its phrases located when there is a
chunker), and grounding a typed phrase."""

import streamlit as st

from grounding.overlay import render_overlay
from ui.app import resources
from ui.app.data import MAX_UPLOAD_BYTES, decode_upload
from ui.app.views import grounded_caption, hit_grid, tag_line
from warehouse import InputError

workdir = resources.workdir()
root = str(workdir.root)
model = resources.model_id(root)
k, where = resources.filters_sidebar(root, "upload")
st.title("Upload")
uploaded = st.file_uploader("An image (JPEG, PNG, WebP, GIF, BMP, TIFF)", key="upload_file",
                            type=["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"])
if uploaded is None:
    st.stop()
try:
    if uploaded.size > MAX_UPLOAD_BYTES:  # before reading it
        raise InputError(f"{uploaded.name} is {uploaded.size / 2**20:.1f} MB; uploads are limited to "
                         f"{MAX_UPLOAD_BYTES / 2**20:g} MB")
    image = decode_upload(uploaded.name, uploaded.getvalue())
except ValueError as e:
    st.error(str(e))
    st.stop()

left, right = st.columns([2, 3])
with left:
    st.image(image, caption=f"{uploaded.name} · {image.width}×{image.height}", width="stretch")
with right:
    searcher = resources.searcher(root, model)
    vector = searcher.image_vector(image)
    st.subheader("Tags")
    shown = False
    for method in ("probe", "knn", "zeroshot"):
        fitted = resources.tagger(root, method, model)
        if fitted is None:
            continue
        tagger, tag_data = fitted
        st.markdown(f"**{method}**: " + tag_line(tagger, tag_data, vector[None, :]))
        shown = True
    if not shown:
        st.caption("no tagger fitted yet: `groundex tag --method knn`")
    st.subheader("Caption")
    captioner = resources.captioner(root)
    if captioner is None:
        st.caption("no captioner trained yet: `groundex caption train`")
    else:
        splits, _ = resources.filter_choices(root)
        memories = ["train", "all", *(f"train,{s}" for s in splits if s != "train")]
        memory = st.selectbox("caption memory", memories, key="upload_memory",
                              help="the human captions retrieval draws from: the train split's (what the captioner "
                                   "was trained with), every captioned image's, or train and another split's")
        try:
            caption, retrieved = captioner.caption_image(image, memory=memory)
        except (InputError, KeyError) as e:  # a memory with no captions, or captions not embedded yet
            st.error(str(e))
            st.stop()
        chunker = resources.chunker(root)
        if chunker is None:
            st.markdown(f"**{caption}**")
            st.caption("its phrases are not located: no phrase chunker yet (`groundex chunk train`)")
        else:
            grounded_caption(root, model, chunker, caption, image, image, width=420)
        with st.expander("retrieved captions (the prompt)"):
            for text in retrieved:
                st.write(text)
    phrase = st.text_input("Ground a phrase", key="upload_phrase", placeholder="a dog")
    if phrase.strip():
        try:
            grounding = resources.grounder(root, model).ground(phrase, image)
            st.image(render_overlay(image, grounding, max_side=512), width=420,
                     caption=f"“{phrase}”: best patch {grounding.score:.3f}")
        except ValueError as e:
            st.error(str(e))

st.subheader("Similar images")
hit_grid(searcher.image_to_image(image, k=k, where=where), key="upload", root=root)
