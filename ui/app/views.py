"""Widgets several pages use."""

from __future__ import annotations

from typing import Any

import streamlit as st

from . import resources

COLUMNS = 4


def tag_line(tagger: Any, tag_data: Any, vectors: Any, image_ids: Any = None) -> str:
    """Markdown: one image's tags by score, those passing their thresholds; when none does, its best-scoring tags,
    said to be below threshold (a ranked list is still informative, a blank is not)."""
    tags = tagger.predict(tag_data, vectors, image_ids)[0]
    if tags:
        return ", ".join(f"{w} ({s:.2f})" for w, s in tags)
    ranked = tagger.ranked(tag_data, vectors, image_ids, n=5)[0]
    return "no tag passes its threshold; highest scores: _" + ", ".join(f"{w} ({s:.2f})" for w, s in ranked) + "_"


def hit_grid(hits: list[Any], key: str, root: str) -> None:
    """Search hits as a grid of thumbnails with score, first caption and tags; each with "similar" (more
    like this: image -> image search) and "open" (the Image page) buttons."""
    if not hits:
        st.info("No image matches.")
        return
    tags = resources.tags_of(root, tuple(h.image_id for h in hits))
    for start in range(0, len(hits), COLUMNS):
        for column, hit in zip(st.columns(COLUMNS), hits[start:start + COLUMNS], strict=False):
            with column:
                st.image(resources.thumbnail(hit.path), width="stretch")
                st.markdown(f"**{hit.score:.3f}** · image {hit.image_id} · {hit.split or 'no split'}")
                if hit.captions:
                    st.caption(hit.captions[0])
                words = tags.get(hit.image_id, [])
                if words:
                    st.caption("tags: " + ", ".join(dict.fromkeys(t["keyword"] for t in words[:8])))
                left, right = st.columns(2)
                if left.button("similar", key=f"{key}_like_{start}_{hit.image_id}"):
                    st.session_state["like_id"] = hit.image_id
                    st.switch_page("pages/search.py")
                if right.button("open", key=f"{key}_open_{start}_{hit.image_id}"):
                    resources.open_image(hit.image_id)
