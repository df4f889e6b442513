"""Search: text -> image, image -> image ("more like this" or an image id), image -> text; catalog filters."""

import streamlit as st

from ui.app import data, resources
from ui.app.views import hit_grid

workdir = resources.workdir()
root = str(workdir.root)
model = resources.model_id(root)
k, where = resources.filters_sidebar(root, "search")
searcher = resources.searcher(root, model)

st.title("Search")
modes = ["text → image", "image → image", "image → text"]
if "like_id" in st.session_state:  # a "more like this" click on the last run
    st.session_state["search_mode"] = modes[1]
    st.session_state["search_image_id"] = st.session_state.pop("like_id")
if "search_image_id" not in st.session_state:
    st.session_state["search_image_id"] = data.first_image_id(workdir) or 0
mode = st.radio("mode", modes, horizontal=True, key="search_mode", label_visibility="collapsed")
try:
    if mode == modes[0]:
        query = st.text_input("Describe the images", key="search_query", placeholder="a dog running on the beach")
        if query.strip():
            hits = searcher.text_to_image(query, k=k, where=where)
            st.caption(f"{len(hits)} images for “{query}”" + (f" where {where}" if where else ""))
            hit_grid(hits, key="text", root=root)
    else:
        image_id = st.number_input("image id", min_value=0, step=1, key="search_image_id")
        query_image = resources.details(root, [int(image_id)]).get(int(image_id))
        if query_image is None:
            st.stop()  # resources.details said why
        st.image(resources.thumbnail(query_image["path"]), caption=f"image {int(image_id)}", width=160)
        if mode == modes[1]:
            hits = searcher.image_to_image(int(image_id), k=k, where=where)
            st.caption(f"{len(hits)} images most like image {int(image_id)}")
            hit_grid(hits, key="image", root=root)
        else:
            hits = searcher.image_to_text(int(image_id), k=k, where=where)
            st.dataframe([{"score": round(h.score, 3), "caption": h.text, "of image": h.image_id, "split": h.split}
                          for h in hits], hide_index=True, width="stretch")
except (ValueError, KeyError, FileNotFoundError) as e:
    st.error(str(e))
