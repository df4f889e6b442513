import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import ANNOTATIONS, annotation_xml
from warehouse.entities import (
    FormatError,
    decode_text,
    format_annotation,
    format_caption,
    parse_annotation,
    parse_caption,
    parse_sentences,
)
from warehouse.records import Box, Phrase

OFFICIAL = ("[/EN#18/people A woman] in [/EN#19/clothing a green coat] is walking up "
            "[/EN#20/other a flight of steps] near [/EN#23/scene a stone archway] .")


def test_parse_caption_official_line():
    caption = parse_caption(OFFICIAL)
    assert caption.text == "A woman in a green coat is walking up a flight of steps near a stone archway ."
    assert caption.phrases == (
        Phrase(18, ("people",), "A woman", 0),
        Phrase(19, ("clothing",), "a green coat", 3),
        Phrase(20, ("other",), "a flight of steps", 9),
        Phrase(23, ("scene",), "a stone archway", 14),
    )


def test_parse_caption_notvisual_multitype_and_one_word_phrase():
    caption = parse_caption("[/EN#682/animals/scene A brown horse] sniffs [/EN#0/notvisual it] [/EN#5/other grass]")
    assert [p.types for p in caption.phrases] == [("animals", "scene"), ("notvisual",), ("other",)]
    assert caption.phrases[1] == Phrase(0, ("notvisual",), "it", 4)
    assert caption.phrases[2].text == "grass"
    assert caption.text == "A brown horse sniffs it grass"


@pytest.mark.parametrize("line, message", [
    ("[/EN#1/people A man [/EN#2/other hat] ]", "nested"),
    ("[/EN#1/people A man walks", "not closed"),
    ("A man ] walks", "stray bracket"),
    ("[EN#1/people A man]", "bad phrase head"),
    ("[/EN#x/people A man]", "bad phrase head"),
    ("[/EN#1 A man]", "bad phrase head"),
    ("[/EN#1/people ]", "empty phrase"),
    ("   ", "no words"),
])
def test_parse_caption_rejects_broken_markup(line, message):
    with pytest.raises(FormatError, match=message):
        parse_caption(line)


def test_parse_sentences_names_the_line_and_skips_blank_lines():
    text = f"{OFFICIAL}\n\nA dog [/EN#3/animals runs\n"
    with pytest.raises(FormatError, match=r"^line 3: phrase for entity 3 is not closed"):
        parse_sentences(text)
    assert [n for n, _ in parse_sentences(f"{OFFICIAL}\n\n{OFFICIAL}\n")] == [1, 3]


def test_decode_text_rejects_non_utf8_and_accepts_bom():
    assert decode_text("\ufeffcafé".encode()) == "café"
    with pytest.raises(FormatError, match=r"not valid UTF-8 \(byte 3"):
        decode_text(b"caf\xe9 au lait")


def test_parse_annotation_boxes_multi_names_and_flags():
    xml = annotation_xml("2000000002", *ANNOTATIONS["2000000002"]).encode()
    annotation = parse_annotation(xml)
    assert annotation.size == (500, 333)
    # 1-based inclusive pixels become continuous edges: x1 = xmin - 1, x2 = xmax
    assert annotation.boxes == [Box((2,), 11, 9, 100, 200), Box((2, 3), 200, 49, 400, 333)]
    by_id = {e.entity_id: e for e in annotation.entities}
    assert (by_id[2].n_boxes, by_id[3].n_boxes, by_id[4].n_boxes) == (2, 1, 0)
    assert by_id[4].scene and not by_id[4].nobndbox


@pytest.mark.parametrize("xml, message", [
    (b"<annotation><size><width>10</width>", "malformed XML"),
    (b"<annotation><object><name>1</name></object></annotation>", "missing <size>"),
    (b"<annotation><size><width>0</width><height>5</height></size></annotation>", "positive integers"),
    (b"<annotation><size><width>10</width><height>10</height></size><object><name>a</name></object></annotation>",
     "not an integer"),
    (b"<annotation><size><width>10</width><height>10</height></size><object></object></annotation>", "no <name>"),
    (b"<annotation><size><width>10</width><height>10</height></size><object><name>1</name><bndbox><xmin>1</xmin>"
     b"<ymin>1</ymin><xmax>q</xmax><ymax>3</ymax></bndbox></object></annotation>", "not a number"),
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;">]><annotation>&y;</annotation>',
     "unsafe XML refused"),
])
def test_parse_annotation_errors(xml, message):
    with pytest.raises(FormatError, match=message):
        parse_annotation(xml)


def test_format_annotation_round_trips():
    boxes = [Box((1, 7), 0, 4, 30, 40), Box((2,), 10, 10, 20, 22)]
    xml = format_annotation("a.jpg", (64, 48), boxes, no_box=[(3, True, False), (4, False, True)])
    annotation = parse_annotation(xml.encode())
    assert annotation.size == (64, 48) and annotation.boxes == boxes
    flags = {e.entity_id: (e.n_boxes, e.scene, e.nobndbox) for e in annotation.entities}
    assert flags == {1: (1, False, False), 2: (1, False, False), 3: (0, True, False), 4: (0, False, True),
                     7: (1, False, False)}


_word = st.text(alphabet=st.characters(categories=("L", "N"), include_characters="'.,-"), min_size=1, max_size=8)
_types = st.lists(st.sampled_from(["people", "clothing", "scene", "other", "notvisual"]), min_size=1, max_size=2)
_segment = st.one_of(
    st.lists(_word, min_size=1, max_size=3).map(" ".join),
    st.tuples(st.integers(0, 10**6), _types, st.lists(_word, min_size=1, max_size=4).map(" ".join)),
)


@given(st.lists(_segment, min_size=1, max_size=6))
def test_format_then_parse_caption_is_identity(segments):
    caption = parse_caption(format_caption(segments))
    expected_phrases = [(e, tuple(t), text) for e, t, text in (s for s in segments if not isinstance(s, str))]
    assert [(p.entity_id, p.types, p.text) for p in caption.phrases] == expected_phrases
    words = caption.text.split()
    for p in caption.phrases:
        assert words[p.first_word_index: p.first_word_index + len(p.text.split())] == p.text.split()


@given(st.text(max_size=80))
def test_parse_caption_never_fails_with_anything_but_format_error(line):
    try:
        caption = parse_caption(line)
    except FormatError:
        return
    assert caption.text == " ".join(line.split())
