"""`groundex export entities`: the official Flickr30k Entities layout, read back by `groundex ingest flickr30k`."""

import json

import pytest

from ui.cli import main
from warehouse import (
    Catalog,
    GeneratedPhrase,
    IngestConfig,
    SyntheticConfig,
    Workdir,
    ingest_flickr30k,
    ingest_synthetic,
)
from warehouse.export import _split_trailing, file_id


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = Workdir(tmp_path_factory.mktemp("export") / "w")
    ingest_synthetic(workdir, SyntheticConfig(n=40), config=IngestConfig(progress=False))
    return workdir


def _annotations(workdir, split):
    """Per image key: its human captions, phrases (text, types, first word, entity) and boxes, as stored."""
    with Catalog.open(workdir, read_only=True) as catalog:
        rows = catalog.query(
            "SELECT i.key, c.text, "
            "list((p.text, p.types, p.first_word_index, p.entity_id) ORDER BY p.first_word_index) "
            "FILTER (WHERE p.id IS NOT NULL) FROM images i JOIN captions c ON c.image_id = i.id "
            "LEFT JOIN phrases p ON p.caption_id = c.id WHERE i.split = ? AND c.source = 'human' "
            "GROUP BY i.key, c.id, c.text ORDER BY i.key, c.id", [split])
        boxes = catalog.query(
            "SELECT i.key, list((b.entity_ids, b.x1, b.y1, b.x2, b.y2) ORDER BY b.id) FROM images i "
            "JOIN boxes b ON b.image_id = i.id WHERE i.split = ? GROUP BY i.key ORDER BY i.key", [split])
        flags = catalog.query("SELECT i.key, e.entity_id, e.n_boxes, e.scene, e.nobndbox FROM images i JOIN entities e "
                              "ON e.image_id = i.id WHERE i.split = ? ORDER BY ALL", [split])
    captions: dict[str, list] = {}
    for key, text, phrases in rows:
        captions.setdefault(key, []).append((text, phrases or []))
    return captions, dict(boxes), flags


def test_a_split_exported_and_ingested_again_has_the_same_captions_phrases_and_boxes(source, tmp_path, capsys):
    with Catalog.open(source) as catalog:  # an entity with boxes may carry a flag too (the release has some)
        [(image_id, entity_id)] = catalog.query(
            "SELECT e.image_id, e.entity_id FROM entities e JOIN images i ON i.id = e.image_id WHERE i.split = 'val' "
            "AND e.n_boxes > 0 ORDER BY ALL LIMIT 1")
        catalog.con.execute("UPDATE entities SET scene = true WHERE image_id = ? AND entity_id = ?",
                            [image_id, entity_id])
    out = tmp_path / "entities"
    assert main(["export", "entities", "--workdir", str(source.root), "--split", "val", "--out", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = (out / "val.txt").read_text().split()
    assert report["images"] == len(names) > 0 and report["phrases"] > 0 and report["boxes"] > 0
    assert sorted(p.stem for p in (out / "Sentences").iterdir()) == sorted(names)
    assert all((out / "images" / f"{n}.jpg").is_symlink() for n in names)
    first = (out / "Annotations" / f"{names[0]}.xml").read_text()
    assert "<xmin>" in first and "<width>" in first  # 1-based inclusive pixels, in the image's size
    again = Workdir(tmp_path / "again")
    ingest_flickr30k(again, out, dataset="synthetic", config=IngestConfig(progress=False))
    assert _annotations(again, "val") == _annotations(source, "val")
    # a second export into the same folder is refused rather than mixed
    assert main(["export", "entities", "--workdir", str(source.root), "--split", "val", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_generated_captions_export_with_their_grounded_phrases_and_read_back(source, tmp_path, capsys):
    with Catalog.open(source) as catalog:
        [(image_id, _)] = catalog.image_rows("val")[:1]
        width = catalog.image_details([image_id])[image_id]["width"]
        phrases = [GeneratedPhrase(("people",), "a man", 0, "ch", "m", (0.0, 1.0, 20.0, 30.0), 0.9),
                   GeneratedPhrase(("notvisual",), "the picture", 3, "ch"),
                   GeneratedPhrase(("animals",), "a dog", 6, "ch"),  # found, but no box
                   GeneratedPhrase(("scene",), "the park", 9, "ch", "m", (5.0, 6.0, float(width), 40.0), 0.2)]
        catalog.replace_generated_captions("cap", [(image_id, "a man in the picture with a dog, in the park.")],
                                           [phrases])
        catalog.add_artefact("captioner", "cap", "captioners/cap", source="trained", info={})
    out = tmp_path / "generated"
    assert main(["export", "entities", "--workdir", str(source.root), "--split", "val", "--out", str(out),
                 "--generated", "--images", "copy"]) == 0
    assert "4 phrases, 2 boxes" in capsys.readouterr().out
    name = file_id(catalog_key(source, image_id))
    line = (out / "Sentences" / f"{name}.txt").read_text().strip()
    assert line == ("[/EN#1/people a man] in [/EN#0/notvisual the picture] with [/EN#3/animals a dog] , in "
                    "[/EN#4/scene the park] .")
    xml = (out / "Annotations" / f"{name}.xml").read_text()  # the release's 1-based inclusive pixels
    assert "<xmin>1</xmin>\n\t\t\t<ymin>2</ymin>\n\t\t\t<xmax>20</xmax>\n\t\t\t<ymax>30</ymax>" in xml
    again = Workdir(tmp_path / "again")
    ingest_flickr30k(again, out, dataset="synthetic", config=IngestConfig(progress=False))
    with Catalog.open(again, read_only=True) as catalog:
        [new_id] = [i for i, d in catalog.image_details([i for i, _ in catalog.image_rows()]).items()
                    if d["key"] == catalog_key(source, image_id)]
        [caption] = catalog.query("SELECT text FROM captions WHERE image_id = ?", [new_id])
        assert caption[0] == "a man in the picture with a dog , in the park ."
        stored = catalog.query("SELECT text, types, entity_id FROM phrases WHERE image_id = ? "
                               "ORDER BY first_word_index", [new_id])
        assert stored == [("a man", ["people"], 1), ("the picture", ["notvisual"], 0), ("a dog", ["animals"], 3),
                          ("the park", ["scene"], 4)]
        boxes = catalog.query("SELECT entity_ids, x1, y1, x2, y2 FROM boxes WHERE image_id = ? ORDER BY id", [new_id])
        assert boxes == [([1], 0.0, 1.0, 20.0, 30.0), ([4], 5.0, 6.0, float(width), 40.0)]
        assert catalog.query("SELECT nobndbox FROM entities WHERE image_id = ? AND entity_id = 3", [new_id]) == \
            [(True,)]
    assert (out / "images" / f"{name}.jpg").is_file() and not (out / "images" / f"{name}.jpg").is_symlink()


def catalog_key(workdir, image_id):
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.image_details([image_id])[image_id]["key"]


def test_file_ids_and_punctuation():
    assert file_id("flickr30k/1000092795") == "1000092795"
    assert file_id("file:/photos/holiday/beach 1.jpg") == "photos_holiday_beach_1"  # `ingest folder` keys
    words, spans = _split_trailing(["a", "dog.", "runs", "home!"], [(0, 2, 1, ("animals",)), (3, 4, 2, ("scene",))])
    assert words == ["a", "dog", ".", "runs", "home", "!"] and spans == [(0, 2, 1, ("animals",)),
                                                                        (4, 5, 2, ("scene",))]
