"""Explore: dataset statistics, tag and phrase-type frequencies, caption lengths, and a 2-D map of the
image embeddings where hovering shows the thumbnail and caption."""

import altair as alt
import pandas as pd
import streamlit as st

from ui.app import data, resources

workdir = resources.workdir()
root = str(workdir.root)
model = resources.model_id(root)
st.title("Explore")


@st.cache_data(ttl=60, show_spinner="reading the catalog")
def statistics(root: str) -> dict:
    return data.statistics(resources.Workdir(root))


@st.cache_data(show_spinner="projecting the embeddings")
def embedding_map(root: str, model_id: str, method: str, limit: int) -> pd.DataFrame:
    points = pd.DataFrame(data.embedding_map(resources.Workdir(root), model_id, method, limit))
    points["image"] = [data.thumbnail_data_url(p) for p in points.pop("path")]
    return points


stats = statistics(root)
counts = stats["counts"]
columns = st.columns(6)
for column, (name, value) in zip(columns, [(n, counts[n]) for n in ("images", "captions", "phrases", "boxes", "tags",
                                                                    "generated_captions")], strict=True):
    column.metric(name.replace("_", " "), f"{value:,}")
st.subheader("Embedding map")
method = st.radio("projection", ["pca", "tsne"], horizontal=True, key="explore_method",
                  format_func={"pca": "PCA", "tsne": "t-SNE"}.get)
limit = st.slider("images (a random sample)", 100, 5000, 1000, step=100, key="explore_limit")
try:
    points = embedding_map(root, model, method, limit)
except ValueError as e:
    st.error(str(e))
else:
    chart = alt.Chart(points).mark_circle(size=40, opacity=0.7).encode(
        x=alt.X("x", axis=None), y=alt.Y("y", axis=None), color="split:N",
        tooltip=["id", "split", "caption", "image"]).interactive()
    st.altair_chart(chart, width="stretch")
    st.caption("Hover a point for its thumbnail and first caption; scroll to zoom.")

left, middle, right = st.columns(3)
with left:
    st.subheader("Images by split")
    st.bar_chart(pd.DataFrame(stats["splits"], columns=["split", "images"]), x="split", y="images")
with middle:
    st.subheader("Phrase types")
    if stats["phrase_types"]:
        st.bar_chart(pd.DataFrame(stats["phrase_types"], columns=["type", "phrases"]), x="type", y="phrases")
    else:
        st.caption("no phrases (not a Flickr30k Entities collection)")
with right:
    st.subheader("Caption length (words)")
    if stats["caption_lengths"]:
        lengths = pd.DataFrame({"words": stats["caption_lengths"]})
        st.altair_chart(alt.Chart(lengths).mark_bar().encode(alt.X("words:Q", bin=alt.Bin(maxbins=30)), y="count()"),
                        width="stretch")
if stats["tags"]:
    st.subheader("Most frequent tags")
    tags = pd.DataFrame(stats["tags"][:20], columns=["tag", "images"])
    st.altair_chart(alt.Chart(tags).mark_bar().encode(x="images:Q", y=alt.Y("tag:N", sort="-x", title=None)),
                    width="stretch")

