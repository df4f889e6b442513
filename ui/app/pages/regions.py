"""Phrase -> region: a phrase searched over the whole collection; each hit with its heatmap and boxes."""

import streamlit as st

from grounding.overlay import render_overlay
from ui.app import resources
from warehouse import load_image

workdir = resources.workdir()
root = str(workdir.root)
model = resources.model_id(root)
k, where = resources.filters_sidebar(root, "regions")
st.title("Phrase → region")
phrase = st.text_input("Which part of which image shows…", key="regions_phrase",
                       placeholder="the man in the red jacket")
if phrase.strip():
    try:
        results = resources.grounder(root, model).search(phrase, k=k, where=where)
    except (ValueError, FileNotFoundError) as e:
        st.error(str(e))
        st.stop()
    st.caption(f"{len(results)} images, best first: the best region's cosine, plus a little of the whole image's "
               "(rank_global in the model's grounding config) when shown")
    columns = st.columns(4)
    for n, grounding in enumerate(results):
        with columns[n % 4]:
            st.image(render_overlay(load_image(grounding.path), grounding, max_side=320), width="stretch")
            whole = f" (image {grounding.image_score:.3f})" if grounding.image_score is not None else ""
            st.markdown(f"**{grounding.score:.3f}**{whole} · image {grounding.image_id}")
            if st.button("open", key=f"regions_open_{grounding.image_id}"):
                resources.open_image(grounding.image_id)
