"""Property-based tests (hypothesis) of what takes a user's text: the Entities parsers and the query API.
Whatever the input, the answer is a result or a clear error (FormatError / ValueError), and nothing is written."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.search import MAX_QUERY_CHARS, Searcher
from tests.helpers import built_workdir
from warehouse import Catalog
from warehouse.entities import FormatError, parse_annotation, parse_sentences

_xmlish = st.lists(st.sampled_from(["<annotation>", "</annotation>", "<size>", "</size>", "<width>", "</width>",
                                    "<height>", "</height>", "<object>", "</object>", "<name>", "</name>",
                                    "<bndbox>", "</bndbox>", "<xmin>", "</xmin>", "<ymax>", "</ymax>",
                                    "<nobndbox>", "</nobndbox>", "12", "-3", "x", "1e9", "&", "<!DOCTYPE a>"]),
                   max_size=40).map("".join)


@given(st.one_of(st.binary(max_size=200), _xmlish.map(str.encode)))
def test_parse_annotation_never_fails_with_anything_but_format_error(data):
    try:
        annotation = parse_annotation(data)
    except FormatError:
        return
    assert min(annotation.size) > 0


@given(st.text(max_size=300))
def test_parse_sentences_never_fails_with_anything_but_format_error(text):
    try:
        captions = parse_sentences(text)
    except FormatError as e:
        assert str(e).startswith("line ")
        return
    assert len(captions) == sum(1 for line in text.splitlines() if line.strip())


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    return Searcher(built_workdir(tmp_path_factory.mktemp("prop") / "w", n=60, epochs=1))


def _stored(workdir):
    with Catalog.open(workdir, read_only=True) as c:
        return c.counts()


_queries = st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "🐶", "a red dog", "x" * 2000, "' OR 1=1 --"]))
_ks = st.one_of(st.integers(-5, 200), st.sampled_from([0, 1, 10**9]))


@pytest.mark.slow  # 60 searches on a trained workdir
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=_queries, k=_ks)
def test_text_search_answers_or_refuses_clearly(searcher, query, k):
    try:
        hits = searcher.text_to_image(query, k=k)
    except ValueError as e:
        assert str(e)
        assert not query.strip() or k < 1 or len(query) > MAX_QUERY_CHARS
        return
    assert query.strip() and k >= 1
    assert len(hits) == min(k, 60)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and len({h.id for h in hits}) == len(hits)


_conditions = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["split", "=", "'val'", "id", ">", "10", "AND", "OR", "(", ")", ";", "--", "tag",
                              "'dog'", "DROP TABLE images", "read_text('/etc/passwd')", "width", "<", "NOT"]),
             min_size=1, max_size=8).map(" ".join))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=_conditions)
def test_where_conditions_filter_or_refuse_and_never_write(searcher, where):
    before = _stored(searcher.workdir)
    with Catalog.open(searcher.workdir, read_only=True) as catalog:
        all_ids = set(catalog.image_ids_where("true"))
        try:
            ids = catalog.image_ids_where(where)
        except ValueError as e:
            assert str(e)
            ids = None
    if ids is not None:
        assert set(ids) <= all_ids
    assert _stored(searcher.workdir) == before
