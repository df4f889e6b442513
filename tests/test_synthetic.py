import numpy as np
import pytest

import warehouse
from warehouse import (
    Catalog,
    IngestConfig,
    SyntheticConfig,
    Workdir,
    generate_dataset,
    generate_scene,
    load_image,
)
from warehouse.entities import parse_annotation, parse_sentences
from warehouse.synthetic import COLOURS


def test_scenes_are_deterministic_per_seed_and_index():
    a, b, c = generate_scene(0, 5), generate_scene(0, 5), generate_scene(1, 5)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1:] == b[1:]
    assert a[1] != c[1] or not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_larger_dataset_extends_a_smaller_one(tmp_path):
    small = generate_dataset(tmp_path / "small", SyntheticConfig(n=6), progress=False)
    large = generate_dataset(tmp_path / "large", SyntheticConfig(n=9), progress=False)
    for sub in ("images", "Sentences", "Annotations"):
        for path in (small / sub).iterdir():
            assert path.read_bytes() == (large / sub / path.name).read_bytes()
    assert len(list((large / "images").iterdir())) == 9


def test_generated_files_are_valid_entities_format(tmp_path):
    root = generate_dataset(tmp_path / "s", SyntheticConfig(n=30), progress=False)
    for xml in (root / "Annotations").iterdir():
        annotation = parse_annotation(xml.read_bytes())
        assert annotation.size == (128, 128)
        for box in annotation.boxes:
            assert 0 <= box.x1 < box.x2 <= 128 and 0 <= box.y1 < box.y2 <= 128
        boxed = {e.entity_id for e in annotation.entities if e.n_boxes}
        for _, caption in parse_sentences((root / "Sentences" / f"{xml.stem}.txt").read_text()):
            for phrase in caption.phrases:
                if phrase.types == ("notvisual",):
                    assert phrase.entity_id == 0
                elif phrase.types == ("scene",):
                    assert next(e for e in annotation.entities if e.entity_id == phrase.entity_id).scene
                else:
                    assert phrase.entity_id in boxed, (xml.stem, phrase)
    ids = [line for name in ("train", "val", "test") for line in (root / f"{name}.txt").read_text().split()]
    assert sorted(ids) == sorted(p.stem for p in (root / "images").iterdir())


@pytest.fixture(scope="module")
def synthetic_workdir(tmp_path_factory):
    workdir = Workdir(tmp_path_factory.mktemp("syn") / "work")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=200), config=IngestConfig(progress=False))
    return workdir


def test_dataset_has_the_variety_retrieval_and_grounding_need(synthetic_workdir):
    with Catalog.open(synthetic_workdir, read_only=True) as catalog:
        counts = catalog.counts()
        distinct = catalog.query("SELECT count(DISTINCT text) FROM captions")[0][0]
        types = {t for (t,) in catalog.query("SELECT DISTINCT unnest(types) FROM phrases")}
        multi_box = catalog.query("SELECT count(*) FROM entities WHERE n_boxes > 1")[0][0]
        multi_name = catalog.query("SELECT count(*) FROM boxes WHERE len(entity_ids) > 1")[0][0]
    assert counts["images"] == 200 and counts["captions"] == 1000
    assert distinct > 900  # five different captions per image, rarely repeated across images
    assert types >= {"people", "clothing", "animals", "vehicles", "scene", "other", "notvisual"}
    assert multi_box > 0 and multi_name > 0
    assert 130 <= counts["splits"]["train"] <= 185 and counts["splits"]["val"] >= 8


def test_colour_words_describe_the_pixels_inside_the_phrase_box(synthetic_workdir):
    """Each phrase naming a colour has that colour on a good part of its box: captions tell the truth."""
    with Catalog.open(synthetic_workdir, read_only=True) as catalog:
        hits = catalog.query(
            "SELECT i.path, p.text, b.x1, b.y1, b.x2, b.y2 FROM phrases p "
            "JOIN images i ON i.id = p.image_id "
            "JOIN boxes b ON b.image_id = p.image_id AND list_contains(b.entity_ids, p.entity_id) "
            "JOIN entities e ON e.image_id = p.image_id AND e.entity_id = p.entity_id "
            "WHERE e.n_boxes = 1 AND len(b.entity_ids) = 1 LIMIT 400")
    checked = 0
    for path, text, x1, y1, x2, y2 in hits:
        colour = next((c for c in COLOURS if c in text.split()), None)
        if colour is None:
            continue
        image = np.asarray(load_image(path), dtype=np.int32)
        close = np.abs(image - np.array(COLOURS[colour])).sum(axis=-1) < 90  # (H, W)
        in_box = close[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))].mean()
        assert in_box > 0.08 and in_box > 1.5 * close.mean(), (path, text, in_box, close.mean())
        checked += 1
    assert checked > 50
