"""What the pages share: the workdir, and models, indexes, captioner and chunker loaded once per process
(`st.cache_resource`); thumbnails cached by path (`st.cache_data`)."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from warehouse import ArtefactError, Catalog, Condition, Workdir

from . import data
from .console import SqlConsole

WORKDIR_ENV = "GROUNDEX_WORKDIR"
BUILD_HELP = """This app browses a **built workdir**. Build one with either of:

```
groundex demo --workdir WORKDIR          # the embedded synthetic scenes, about 8 minutes on 2 cores
make demo                                # the same, into ./groundex-work (from the repository)
```
or, for your own data, `groundex ingest ...`, `groundex train`, `groundex index` (see the README). Then start
the app on it: `groundex ui --workdir WORKDIR`."""


def workdir() -> Workdir:
    """The workdir named by `groundex ui` (environment variable GROUNDEX_WORKDIR); when it is not built, the
    page explains how to build one and stops."""
    built, why = data.workdir_state(os.environ.get(WORKDIR_ENV))
    if built is None:
        st.warning(f"No workdir to show: {why}.")
        st.markdown(BUILD_HELP)
        st.stop()
    return built


@st.cache_data(ttl=30, show_spinner=False)
def indexed_models(root: str) -> list[tuple[str, str]]:
    """(model id, what the chooser shows) of the models that have an image index, newest first."""
    with Catalog.open(Workdir(root), read_only=True) as catalog:
        return [(m.id, " · ".join(filter(None, (m.label, m.id[:12], m.info.get("name"), str(m.created_at)[:16]))))
                for m in catalog.models() if catalog.current_index(m.id, "image") is not None]


def model_id(root: str) -> str:
    """The embedding model the pages search with: chosen in the sidebar among the indexed ones (default:
    the newest). Stops the page with the command to run when no model has an index."""
    models = indexed_models(root)
    if not models:
        st.warning("No model of this workdir has an index yet.")
        st.markdown("Run `groundex index --workdir WORKDIR` (after `groundex train`), then reload.")
        st.stop()
    labels = dict(models)
    chosen = st.session_state.get("chosen_model")  # kept across pages (a widget's own state is not)
    st.session_state["model_select"] = chosen if chosen in labels else models[0][0]
    with st.sidebar:
        st.session_state["chosen_model"] = st.selectbox("model", list(labels), format_func=labels.get,
                                                        key="model_select",
                                                        help="embedding models with an index, newest first")
    return st.session_state["chosen_model"]


def where_clause(split: str | None, tags: list[str], free: str) -> Condition | None:
    """One search filter from the sidebar's choices (tags must all be present): the split and the tags are
    bound parameters; the free SQL condition is the user's own, checked like `--where`."""
    parts: list[str] = []
    params: list[Any] = []
    if split:
        parts.append("split = ?")
        params.append(split)
    if tags:
        parts.append("list_has_all(tags, ?::VARCHAR[])")
        params.append(tuple(tags))
    if free.strip():
        parts.append(f"({free.strip()})")
    return Condition(" AND ".join(parts), tuple(params)) if parts else None


@st.cache_resource(show_spinner="loading the model and its indexes")
def searcher(root: str, model_id: str | None = None) -> Any:
    from indexer.search import Searcher

    return Searcher(Workdir(root), model_id)


@st.cache_resource(show_spinner="loading the grounder")
def grounder(root: str, model_id: str | None = None) -> Any:
    from grounding.ground import Grounder

    return Grounder(Workdir(root), model_id)


@st.cache_resource(show_spinner="loading the captioner")
def captioner(root: str) -> Any:
    """The newest captioner, or None when none was trained."""
    from heads.captioning import Captioner

    try:
        return Captioner(Workdir(root))
    except ArtefactError:  # none trained yet
        return None


CHUNKER_HELP = ("No phrase chunker in this workdir yet: run `groundex chunk train --workdir WORKDIR` (seconds on the "
                "demo) to find and locate the phrases of any caption.")


def chunker(root: str) -> Any:
    """The newest phrase chunker, or None when `groundex chunk train` was never run. The newest is looked up on each
    call (one catalog query), so a chunker trained while the app runs is used without a restart; each is loaded once."""
    with Catalog.open(Workdir(root), read_only=True) as catalog:
        try:
            artefact_id = catalog.artefact("chunker").id
        except ArtefactError:  # none trained yet
            return None
    return _chunker(root, artefact_id)


@st.cache_resource(show_spinner="loading the phrase chunker")
def _chunker(root: str, artefact_id: str) -> Any:
    from heads import open_chunker

    return open_chunker(Workdir(root), artefact_id)


@st.cache_resource(show_spinner="loading the tagger")
def tagger(root: str, method: str, model_id: str | None = None) -> Any:
    """(tagger, its data) of a fitted tagger, or None when `groundex tag --method` was never run."""
    from heads.tagging import load_tagger

    try:
        return load_tagger(Workdir(root), method, model_id)
    except ArtefactError:  # none fitted for this model and method
        return None


@st.cache_resource
def console(root: str) -> SqlConsole:
    return SqlConsole(Workdir(root).catalog_path)


@st.cache_data(max_entries=5000, show_spinner=False)
def thumbnail(path: str, side: int = data.THUMB_SIDE) -> bytes:
    return data.thumbnail(path, side)


@st.cache_data(ttl=30, show_spinner=False)
def filter_choices(root: str) -> tuple[list[str], list[str]]:
    """(splits, the most frequent tags) for the filter widgets."""
    with Catalog.open(Workdir(root), read_only=True) as catalog:
        splits = catalog.splits()
        tags = [t for t, _ in catalog.tag_counts(limit=200)]
    return splits, tags


def filters_sidebar(root: str, key: str) -> tuple[int, str | None]:
    """The sidebar's k and filters; returns (k, where)."""
    splits, tags = filter_choices(root)
    with st.sidebar:
        k = st.slider("results (k)", 1, 60, 12, key=f"{key}_k")
        split = st.selectbox("split", ["any", *splits], key=f"{key}_split")
        chosen = st.multiselect("tags (all of)", tags, key=f"{key}_tags")
        free = st.text_input("SQL condition on images", key=f"{key}_where",
                             help="e.g. width > 300, or tag = 'dog'; columns of the images table, tag and tags")
    return k, where_clause(None if split == "any" else split, chosen, free)


def tags_of(root: str, ids: tuple[int, ...]) -> dict[int, list[dict[str, Any]]]:
    """The stored tags of these images (every method), best first."""
    with Catalog.open(Workdir(root), read_only=True) as catalog:
        return catalog.tags_of(ids)


def details(root: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    """`Catalog.image_details` of these ids; says so on the page when one is not in the catalog."""
    with Catalog.open(Workdir(root), read_only=True) as catalog:
        found = catalog.image_details(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        st.error(f"image id {missing[0]} is not in the catalog")
    return found


def open_image(image_id: int) -> None:
    """Show one image on the Image page."""
    st.session_state["open_image_id"] = int(image_id)
    st.switch_page("pages/image.py")
