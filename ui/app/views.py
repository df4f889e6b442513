"""Widgets several pages use."""

from __future__ import annotations

from typing import Any

import streamlit as st

from . import data, resources

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


def grounded_caption(root: str, model: str, chunker: Any, text: str, image: Any, target: Any,
                     width: int | str = "stretch") -> None:
    """Find the phrases of `text` with the chunker, locate each visual one with `model` and show the caption with
    its phrases underlined in the colours of their boxes, drawn on `image`. `target` is what the grounding reads:
    a catalog image id (its stored patches) or the image itself (an upload, embedded now)."""
    from heads import ground_caption

    try:
        phrases = ground_caption(resources.grounder(root, model), chunker, text, target)
    except (ValueError, OSError) as e:  # no patch grid, a phrase too long to embed (InputError), a missing file
        st.error(str(e))
        return
    located = [p for p in phrases if p.box is not None]
    source = f"phrases found by chunker {(chunker.id or '?')[:8]}, located by model {model[:8]}"
    st.markdown(data.highlighted_caption(text, phrases), unsafe_allow_html=True)
    if not located:
        st.caption(f"{source}: none of its {len(phrases)} phrases has a box (no visual phrase found)")
        return
    st.image(data.phrase_boxes_overlay(image, located), width=width,
             caption=f"{source}: {len(located)} of {len(phrases)} phrases located")
    st.markdown(data.type_legend(p.types for p in located), unsafe_allow_html=True)
