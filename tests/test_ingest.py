from pathlib import Path

import pytest

import warehouse
from tests.helpers import karpathy_entry, write_entities_root, write_image, write_karpathy, write_results_csv
from warehouse import Catalog, FormatError, IngestConfig, SyntheticConfig, Workdir

QUIET = IngestConfig(progress=False, chunk_size=2)  # tiny chunks: exercise several transactions


def counts(workdir: Workdir) -> dict:
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.counts()


def rows(workdir: Workdir, sql: str, params=()) -> list[tuple]:
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.query(sql, params)


def reasons(workdir: Workdir) -> list[str]:
    with Catalog.open(workdir, read_only=True) as catalog:
        return [str(r) for r in catalog.rejects()]


# -- one builder per source, for the tests that hold for all of them --------------------------------

def _flickr30k(tmp: Path, workdir: Workdir):
    return warehouse.ingest_flickr30k(workdir, write_entities_root(tmp / "f30k"), config=QUIET)


def _karpathy(tmp: Path, workdir: Workdir):
    write_image(tmp / "imgs" / "1.jpg")
    write_image(tmp / "imgs" / "2.jpg")
    json_path = write_karpathy(tmp, [karpathy_entry("1.jpg", "train", ["A dog .", "A cat ."], 0),
                                     karpathy_entry("2.jpg", "test", ["A man ."], 1)])
    return warehouse.ingest_karpathy(workdir, json_path, tmp / "imgs", config=QUIET)


def _results_csv(tmp: Path, workdir: Workdir):
    write_image(tmp / "imgs" / "1.jpg")
    csv = write_results_csv(tmp / "results.csv", ["1.jpg| 0| A dog runs .", "1.jpg| 1| A dog plays ."])
    return warehouse.ingest_results_csv(workdir, csv, tmp / "imgs", config=QUIET)


def _hf(tmp: Path, workdir: Workdir):
    return warehouse.ingest_hf(workdir, _write_hf_parquet(tmp / "hf"), config=QUIET)


def _folder(tmp: Path, workdir: Workdir):
    write_image(tmp / "photos" / "a.jpg")
    write_image(tmp / "photos" / "sub" / "b.png", fmt="PNG")
    return warehouse.ingest_folder(workdir, tmp / "photos", config=QUIET)


def _synthetic(tmp: Path, workdir: Workdir):
    return warehouse.ingest_synthetic(workdir, SyntheticConfig(n=12), config=QUIET)


SOURCES = {"flickr30k": (_flickr30k, 2), "karpathy": (_karpathy, 2), "results-csv": (_results_csv, 1),
           "hf": (_hf, 3), "folder": (_folder, 2), "synthetic": (_synthetic, 12)}


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_ingests_and_a_second_ingest_adds_nothing(tmp_path, source):
    build, n_images = SOURCES[source]
    workdir = Workdir(tmp_path / "work")
    first = build(tmp_path, workdir)
    assert (first.added, first.already_present) == (n_images, 0)
    before = counts(workdir)
    second = build(tmp_path, workdir)
    assert (second.added, second.already_present) == (0, n_images)
    after = counts(workdir)
    assert {k: v for k, v in after.items() if k != "runs"} == {k: v for k, v in before.items() if k != "runs"}
    assert after["runs"] == 2
    assert rows(workdir, "SELECT status FROM runs") == [("ok",), ("ok",)]
    manifest = workdir.read_manifest()
    assert manifest["schema_version"] >= 1 and len(manifest["sources"]) == 1


# -- Flickr30k Entities ----------------------------------------------------------------------------

def test_flickr30k_counts_phrases_entities_and_splits(tmp_path):
    workdir = Workdir(tmp_path / "work")
    report = _flickr30k(tmp_path, workdir)
    c = counts(workdir)
    assert (report.added, report.rejected) == (2, 0)
    assert (c["images"], c["captions"], c["phrases"], c["boxes"]) == (2, 5, 14, 7)
    assert c["splits"] == {"train": 1, "val": 1}
    notvisual = rows(workdir, "SELECT entity_id, types, text FROM phrases WHERE list_contains(types, 'notvisual')")
    assert notvisual == [(0, ["notvisual"], "one another")]
    entities = {e: (n, s, nb) for e, n, s, nb in rows(
        workdir, "SELECT entity_id, n_boxes, scene, nobndbox FROM entities e JOIN images i ON e.image_id = i.id "
                 "WHERE i.key = 'flickr30k/2000000002'")}
    assert entities == {2: (2, False, False), 3: (1, False, False), 4: (0, True, False)}
    assert rows(workdir, "SELECT n_boxes, nobndbox FROM entities WHERE entity_id = 21") == [(0, True)]


def test_flickr30k_boxes_are_rescaled_to_the_stored_image_x_and_y_independently(tmp_path):
    workdir = Workdir(tmp_path / "work")
    _flickr30k(tmp_path, workdir)
    boxes = rows(workdir, "SELECT i.key, b.entity_ids, b.x1, b.y1, b.x2, b.y2 FROM boxes b JOIN images i "
                          "ON b.image_id = i.id ORDER BY b.id")
    got = {(key, tuple(ids)): coords for key, ids, *coords in boxes}
    # 375x500 annotated, 75x100 stored: x and y both / 5; xmin 8 (1-based) is edge 7.
    assert got[("flickr30k/2000000001", (18,))] == pytest.approx([1.0, 29.8, 21.2, 68.0])
    assert got[("flickr30k/2000000001", (22,))] == pytest.approx([5.0, 1.0, 75.0, 77.2])
    # 500x333 annotated, 100x50 stored: x / 5, y * 50/333; this box names entities 2 and 3.
    assert got[("flickr30k/2000000002", (2, 3))] == pytest.approx([40.0, 49 * 50 / 333, 80.0, 50.0], rel=1e-5)
    assert rows(workdir, "SELECT width, height FROM images ORDER BY id") == [(75, 100), (100, 50)]


def test_flickr30k_missing_images_are_skipped_and_counted(tmp_path):
    root = write_entities_root(tmp_path / "f30k")
    (root / "images" / "2000000002.jpg").unlink()
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_flickr30k(workdir, root, config=QUIET)
    assert (report.added, report.rejected) == (1, 1)
    assert "2000000002.jpg: image file missing" in reasons(workdir)[0]


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "Annotations" / "2000000002.xml").write_text("<annotation><size>"),
     "2000000002.xml: malformed XML"),
    (lambda r: (r / "Annotations" / "2000000002.xml").write_text(
        "<annotation><object><name>1</name></object></annotation>"), "missing <size>"),
    (lambda r: (r / "Sentences" / "2000000002.txt").write_bytes(b"A dog \xff runs .\n"), "not valid UTF-8"),
    (lambda r: (r / "Sentences" / "2000000002.txt").write_text("A dog .\n[/EN#2/animals A dog runs .\n"),
     "2000000002.txt:2: phrase for entity 2 is not closed"),
    (lambda r: (r / "images" / "2000000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really"), "2000000002.jpg: "),
    (lambda r: (r / "images" / "2000000002.jpg").write_bytes(b""), "empty file"),
    (lambda r: (r / "test.txt").write_text("2000000002\n"), "id 2000000002 is also listed in val.txt"),
])
def test_flickr30k_bad_inputs_reject_that_image_and_keep_going(tmp_path, damage, expected):
    root = write_entities_root(tmp_path / "f30k")
    damage(root)
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_flickr30k(workdir, root, config=QUIET)
    assert report.added == 1 and report.rejected == 1
    assert rows(workdir, "SELECT key FROM images") == [("flickr30k/2000000001",)]
    assert expected in reasons(workdir)[0]
    # nothing of the rejected image was half-written
    assert counts(workdir)["captions"] == 3 and counts(workdir)["boxes"] == 5


def test_flickr30k_inverted_and_outside_boxes_are_dropped_not_the_image(tmp_path):
    root = write_entities_root(tmp_path / "f30k")
    xml = (root / "Annotations" / "2000000002.xml").read_text()
    xml = xml.replace("<xmin>12</xmin>", "<xmin>150</xmin>", 1)           # inverted: xmin 150 > xmax 100
    xml = xml.replace("<xmax>400</xmax>", "<xmax>900</xmax>", 1)          # partly outside: clipped
    (root / "Annotations" / "2000000002.xml").write_text(xml)
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_flickr30k(workdir, root, config=QUIET)
    assert (report.added, report.rejected) == (2, 1)
    assert "inverted or empty; box dropped" in reasons(workdir)[0]
    (x2,), = rows(workdir, "SELECT x2 FROM boxes WHERE entity_ids = [2, 3]")
    assert x2 == 100.0  # clipped to the stored width
    assert rows(workdir, "SELECT n_boxes FROM entities WHERE entity_id = 2 AND image_id = 2") == [(1,)]


def test_flickr30k_new_images_and_split_are_added_without_touching_existing(tmp_path):
    first = write_entities_root(tmp_path / "a", splits={"train": ["2000000001"]})
    for sub, suffix in (("images", "jpg"), ("Sentences", "txt"), ("Annotations", "xml")):
        (first / sub / f"2000000002.{suffix}").unlink()
    workdir = Workdir(tmp_path / "work")
    warehouse.ingest_flickr30k(workdir, first, config=QUIET)
    before = rows(workdir, "SELECT id, key, path, split, added_at FROM images")
    second = write_entities_root(tmp_path / "b", splits={"train": ["2000000001"], "val": ["2000000002"]})
    report = warehouse.ingest_flickr30k(workdir, second, config=QUIET)
    assert (report.added, report.already_present) == (1, 1)
    assert rows(workdir, "SELECT id, key, path, split, added_at FROM images WHERE id = 1") == before
    assert counts(workdir)["splits"] == {"train": 1, "val": 1}


def test_flickr30k_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="images not found"):
        warehouse.ingest_flickr30k(Workdir(tmp_path / "work"), tmp_path, config=QUIET)


# -- Karpathy, results.csv, HF, folder -------------------------------------------------------------

def test_karpathy_splits_rejects_and_captions(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        write_image(tmp_path / "imgs" / name)
    entries = [
        karpathy_entry("1.jpg", "restval", ["Three kids look at a red kite .", "  Spaces   collapse . "], 0),
        karpathy_entry("2.jpg", "val", ["A dog ."], 1),
        karpathy_entry("2.jpg", "val", ["Duplicate ."], 2),
        karpathy_entry("9.jpg", "test", ["Missing image ."], 3),
        karpathy_entry("../3.jpg", "test", ["Traversal ."], 4),
        {"filename": 12, "split": "test", "sentences": []},
        {"filename": "3.jpg", "split": "test", "sentences": [{"tokens": ["a", "red", "bus"]}, {"raw": ""}]},
    ]
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_karpathy(workdir, write_karpathy(tmp_path, entries), tmp_path / "imgs", config=QUIET)
    assert report.added == 3
    assert rows(workdir, "SELECT key, split FROM images ORDER BY id") == [
        ("flickr30k/1", "train"), ("flickr30k/2", "val"), ("flickr30k/3", "test")]
    assert rows(workdir, "SELECT text FROM captions WHERE image_id = 1 ORDER BY ordinal")[1] == ("Spaces collapse .",)
    assert rows(workdir, "SELECT text FROM captions WHERE image_id = 3") == [("a red bus",)]
    text = "\n".join(reasons(workdir))
    for expected in ("duplicate filename '2.jpg'", "9.jpg: image file missing", "unsafe 'filename'",
                     "images[6].sentences[1]: no 'raw' text", "images[5]: missing or unsafe 'filename': 12"):
        assert expected in text


def test_karpathy_bad_json_is_a_clear_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        warehouse.ingest_karpathy(Workdir(tmp_path / "w"), bad, tmp_path / "imgs", config=QUIET)
    bad.write_text('{"images": 3}')
    with pytest.raises(ValueError, match="Karpathy split format"):
        warehouse.ingest_karpathy(Workdir(tmp_path / "w"), bad, tmp_path / "imgs", config=QUIET)


def test_results_csv_rows_and_the_real_files_malformed_line(tmp_path):
    for name in ("2000000003.jpg", "2000000004.jpg"):
        write_image(tmp_path / "imgs" / name)
    csv = write_results_csv(tmp_path / "results.csv", [
        "2000000003.jpg| 0| A man in a yellow raincoat walks his bicycle across a wet street .",
        "2000000003.jpg| 1| A cyclist pushes a bike through the rain .",
        "2000000003.jpg| 1| A duplicate number .",
        "2000000004.jpg| 4 A goat climbs a rock .",  # a missing separator, as one line of the real file has
        "2000000004.jpg| 0| A dog | with a pipe in its caption .",
        "2000000004.jpg| x| Not a number .",
        "0000000000.jpg| 0| No such image .",
    ])
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_results_csv(workdir, csv, tmp_path / "imgs", split="train", config=QUIET)
    assert report.added == 2
    assert rows(workdir, "SELECT text FROM captions ORDER BY id")[-1] == ("A dog | with a pipe in its caption .",)
    assert counts(workdir)["captions"] == 3 and counts(workdir)["splits"] == {"train": 2}
    text = "\n".join(reasons(workdir))
    for expected in ("results.csv:4: duplicate comment_number 1", "results.csv:5: expected 3 '|'-separated fields",
                     "results.csv:7: comment_number is not an integer", "0000000000.jpg: image file missing"):
        assert expected in text


def test_results_csv_without_header_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    csv = tmp_path / "results.csv"
    csv.write_text("1.jpg| 0| A dog .\n")
    with pytest.raises(FormatError, match="results.csv:1: expected header"):
        warehouse.ingest_results_csv(Workdir(tmp_path / "w"), csv, tmp_path / "imgs", config=QUIET)


def _hf_rows():
    from PIL import Image
    return {
        "image": [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))],
        "caption": [["A red picture .", "Red ."], ["A green picture ."], ["A blue picture .", ""]],
        "sentids": [["0", "1"], ["5"], ["10", "11"]],
        "split": ["train", "val", "test"],
        "img_id": ["0", "1", "2"],
        "filename": ["2000000003.jpg", "2000000005.jpg", "2000000001.jpg"],
    }


def _hf_features():
    import datasets
    return datasets.Features({
        "image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
        "sentids": datasets.Sequence(datasets.Value("string")), "split": datasets.Value("string"),
        "img_id": datasets.Value("string"), "filename": datasets.Value("string"),
    })


def _write_hf_parquet(root: Path) -> Path:
    """The layout of the hub's parquet conversion of nlphuji/flickr30k: data/test-*.parquet."""
    import datasets
    if not root.exists():
        (root / "data").mkdir(parents=True)
        datasets.Dataset.from_dict(_hf_rows(), features=_hf_features()).to_parquet(
            str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_hf_parquet_copy_gets_images_captions_and_row_splits(tmp_path):
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_hf(workdir, _write_hf_parquet(tmp_path / "flickr30k"), config=QUIET)
    assert (report.added, report.rejected) == (3, 1)  # the empty caption
    assert rows(workdir, "SELECT key, split, width, height FROM images ORDER BY id") == [
        ("flickr30k/2000000003", "train", 32, 24), ("flickr30k/2000000005", "val", 32, 24),
        ("flickr30k/2000000001", "test", 32, 24)]
    (path,), = rows(workdir, "SELECT path FROM images WHERE id = 1")
    assert Path(path).is_file() and Path(path).is_relative_to(workdir.datasets_dir.resolve())
    assert counts(workdir)["captions"] == 4


def test_hf_save_to_disk_copy_is_read_too(tmp_path):
    import datasets
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(_hf_rows(), features=_hf_features())}).save_to_disk(
        str(tmp_path / "saved"))
    report = warehouse.ingest_hf(Workdir(tmp_path / "work"), tmp_path / "saved", config=QUIET)
    assert report.added == 3


def test_hf_missing_columns_are_named(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['image', 'caption'\]"):
        warehouse.ingest_hf(Workdir(tmp_path / "work"), tmp_path / "odd", config=QUIET)


def test_folder_scans_recursively_skips_hidden_and_rejects_broken(tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    write_image(photos / "deep" / "er" / "b.PNG", fmt="PNG")
    write_image(photos / ".thumbs" / "c.jpg")
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\x00" * 50)
    workdir = Workdir(tmp_path / "work")
    report = warehouse.ingest_folder(workdir, photos, split="train", config=QUIET)
    assert (report.added, report.rejected) == (2, 1)
    keys = [k for (k,) in rows(workdir, "SELECT key FROM images ORDER BY id")]
    assert keys == [f"file:{photos / 'a.jpg'}", f"file:{photos / 'deep' / 'er' / 'b.PNG'}"]
    assert rows(workdir, "SELECT DISTINCT dataset, split FROM images") == [("photos", "train")]
    assert counts(workdir)["captions"] == 0
    assert "broken.jpg: not an image file" in reasons(workdir)[0]
