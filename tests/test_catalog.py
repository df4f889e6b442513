import json
import re

import duckdb
import pytest

import warehouse
from tests.helpers import catalog_at_version
from warehouse import (
    Catalog,
    CatalogError,
    Condition,
    GeneratedPhrase,
    IngestConfig,
    InputError,
    SyntheticConfig,
    Workdir,
)
from warehouse._schema import SCHEMA_VERSION
from warehouse.catalog import ImageInfo, PreparedSample
from warehouse.records import Box, Caption, Entity, Phrase, Reject, Sample


def _prepared(key: str, n_captions: int = 2) -> PreparedSample:
    captions = [Caption(f"caption {i} of {key}", (Phrase(1, ("people",), "caption", 0),)) for i in range(n_captions)]
    sample = Sample(key=key, dataset="t", path=f"/x/{key}.jpg", split="train", captions=captions,
                    entities=[Entity(1, 1)])
    return PreparedSample(sample, ImageInfo(10, 20, "ab" * 32, "JPEG", "RGB"), [Box((1,), 0, 0, 5, 5)])


def test_new_catalog_has_current_schema_and_reopens(tmp_path):
    workdir = Workdir(tmp_path / "w")
    with Catalog.open(workdir) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION
        assert catalog.counts()["images"] == 0
    assert workdir.exists()
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    workdir = Workdir(tmp_path / "w")
    Catalog.open(workdir).close()
    con = duckdb.connect(str(workdir.catalog_path))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(CatalogError, match="newer than this groundex"):
        Catalog.open(workdir)


def test_an_older_catalog_is_upgraded_even_when_opened_to_read(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    catalog_at_version(workdir.catalog_path, 2)  # from before `regions`, `tags` and the artefact store
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION and catalog.regions() == []
        assert catalog.tags_of([1]) == {}


def test_tags_replace_per_method_and_filter_searches(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_samples([_prepared("a"), _prepared("b"), _prepared("c")])
        catalog.replace_tags("m", "knn", [1, 2, 3], [(1, "dog", 0.9), (1, "grass", 0.6), (2, "dog", 0.7),
                                                     (3, "cat", 0.8)])
        catalog.replace_tags("m", "probe", [3], [(3, "grass", 0.5)])
        assert catalog.image_ids_where("tag = 'dog'") == [1, 2]
        assert catalog.image_ids_where("list_has_all(tags, ['dog', 'grass'])") == [1]
        assert catalog.image_ids_where("tag = 'grass' AND id > 1") == [3]  # any method's tags
        assert catalog.image_ids_where("key = 'b'") == [2]  # conditions without tags still work
        # bound values: a tuple binds as a list, and quotes in a value stay inside it
        both = Condition("list_has_all(tags, ?::VARCHAR[]) AND id < ?", (("dog", "grass"), 5))
        assert catalog.image_ids_where(both) == [1]
        assert str(both) == "list_has_all(tags, ['dog', 'grass']::VARCHAR[]) AND id < 5"
        assert catalog.image_ids_where(Condition("tag = ?", ("dog' OR 1=1 --",))) == []
        # a server's condition (hidden columns): the small client language, and a time limit for any condition
        client = Condition("tag = ? AND key <> 'x'", ("dog",), hidden=("path", "sha256"))
        assert catalog.image_ids_where(client, time_limit_s=5.0) == [1, 2]
        with pytest.raises(InputError, match="columns only"):
            catalog.image_ids_where(Condition("path IS NOT NULL", hidden=("path", "sha256")))
        with pytest.raises(TimeoutError, match="the filter ran past 0.2 s"):
            catalog.image_ids_where("id IN (SELECT count(*) FROM range(100000000000))", time_limit_s=0.2)
        assert catalog.image_ids_where("key = 'b'") == [2]  # usable after the stop
        catalog.replace_tags("m", "knn", [1], [(1, "cat", 0.4)])  # a new run replaces that method's rows
        assert [t["keyword"] for t in catalog.tags_of([1])[1]] == ["cat"]
        assert catalog.tag_counts() == [("cat", 2), ("dog", 1), ("grass", 1)]
        with pytest.raises(ValueError, match="unknown tag method"):
            catalog.replace_tags("m", "guess", [1], [])
        assert catalog.remove_images([3]) == 1 and catalog.tags_of([3]) == {}


def test_generated_captions_replace_per_captioner_and_stay_apart_from_human_ones(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_samples([_prepared("a"), _prepared("b")])
        humans = catalog.caption_rows()
        catalog.replace_generated_captions("cap1", [(1, "a dog"), (2, "a cat")])
        catalog.replace_generated_captions("cap1", [(1, "a brown dog")])
        catalog.replace_generated_captions("cap2", [(1, "a thing")])
        assert catalog.caption_rows() == humans  # training and indexing read human captions only
        assert [c["text"] for c in catalog.generated_captions([1])[1]] == ["a thing", "a brown dog"]
        cat = catalog.generated_captions([2], model_id="cap1")[2]
        assert [(c["text"], c["model_id"], c["phrases"]) for c in cat] == [("a cat", "cap1", [])]
        assert catalog.counts()["generated_captions"] == 3


def test_generated_phrases_are_stored_with_their_caption_and_leave_with_it(tmp_path):
    dog = GeneratedPhrase(("animals",), "a brown dog", 0, "ch1", "m1", (1.0, 2.0, 30.0, 40.0), 0.5)
    grass = GeneratedPhrase(("scene",), "the grass", 4, "ch1")  # not grounded: no model, no box
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_samples([_prepared("a"), _prepared("b")])
        annotated = catalog.grounding_rows()
        catalog.replace_generated_captions("cap1", [(1, "a brown dog on the grass"), (2, "a cat")],
                                           phrases=[[dog, grass], []])
        [stored] = catalog.generated_captions([1])[1]
        assert stored["phrases"] == [dog, grass]
        assert catalog.grounding_rows() == annotated  # training and evaluation read annotated phrases only
        catalog.replace_generated_captions("cap1", [(1, "a dog")])  # a new caption replaces the old one's phrases
        assert catalog.counts()["generated_phrases"] == 0
        catalog.replace_generated_captions("cap1", [(1, "a brown dog on the grass")], phrases=[[dog, grass]])
        catalog.replace_generated_captions("cap2", [(2, "a dog")], phrases=[[dog]])
        catalog.remove_images([2])
        assert catalog.counts()["generated_phrases"] == 2
        with pytest.raises(ValueError, match="1 phrase lists for 2 captions"):
            catalog.replace_generated_captions("cap1", [(1, "x"), (1, "y")], phrases=[[]])
        with catalog.transaction():
            catalog.forget_artefact("captioner", "cap1")
        assert catalog.counts()["generated_phrases"] == 0
        assert not any(catalog.dangling_rows().values())
        # a caption's phrases leave together: with the model that grounded one of them, and with their chunker
        catalog.replace_generated_captions("cap1", [(1, "a brown dog on the grass")], phrases=[[dog, grass]])
        with catalog.transaction():
            catalog.forget_model("m1")
        assert catalog.counts()["generated_phrases"] == 0
        catalog.replace_generated_captions("cap1", [(1, "a brown dog on the grass")], phrases=[[dog, grass]])
        with catalog.transaction():
            catalog.forget_artefact("chunker", "ch1")
        assert catalog.counts()["generated_phrases"] == 0 and len(catalog.generated_captions([1])[1]) == 1


def test_read_only_open_of_missing_workdir_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a groundex workdir"):
        Catalog.open(Workdir(tmp_path / "nothing"), read_only=True)


def test_add_samples_assigns_consecutive_ids_across_batches(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        assert catalog.add_samples([_prepared("a"), _prepared("b")]) == 2
        assert catalog.add_samples([_prepared("c", 3)]) == 1
        assert catalog.query("SELECT id, key FROM images ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
        per_image = catalog.query("SELECT image_id, count(*) FROM captions GROUP BY 1 ORDER BY 1")
        assert per_image == [(1, 2), (2, 2), (3, 3)]
        # phrases point at their caption and image; boxes at their image
        assert catalog.query(
            "SELECT count(*) FROM phrases p JOIN captions c ON p.caption_id = c.id WHERE p.image_id = c.image_id"
        ) == [(7,)]
        assert catalog.query("SELECT entity_ids FROM boxes WHERE image_id = ?", [3]) == [([1],)]
        assert catalog.existing_keys(["a", "zz", "c"]) == {"a", "c"}


def test_failed_write_leaves_nothing_behind(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_samples([_prepared("a")])
        with pytest.raises(duckdb.ConstraintException):
            catalog.add_samples([_prepared("b"), _prepared("a")])  # 'a' violates UNIQUE(key)
        counts = catalog.counts()
        assert (counts["images"], counts["captions"], counts["phrases"], counts["boxes"]) == (1, 2, 2, 1)


def test_runs_record_success_and_failure(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        with catalog.run("ingest x", {"root": "/r"}) as (run_id, result):
            result["added"] = 3
        with pytest.raises(RuntimeError), catalog.run("ingest y") as (_, result):
            raise RuntimeError("boom")
        failed, ok = catalog.runs()
        assert ok["status"] == "ok" and ok["result"] == {"added": 3} and ok["config"] == {"root": "/r"}
        assert failed["status"] == "failed" and "boom" in failed["result"]["error"]
        assert ok["id"] == run_id


def test_rejects_round_trip(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_rejects([Reject("/a.txt", "bad", 3), Reject("/b.jpg", "worse")], run_id=7)
        assert catalog.rejects(7) == [Reject("/a.txt", "bad", 3), Reject("/b.jpg", "worse", None)]
        assert catalog.rejects(8) == []


def test_query_values_are_parameters_not_sql(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        catalog.add_samples([_prepared("a")])
        hostile = "a' OR '1'='1"
        assert catalog.query("SELECT count(*) FROM images WHERE key = ?", [hostile]) == [(0,)]


def test_manifest_is_written_and_merged(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    manifest = workdir.update_manifest(artefacts={"m1": {"kind": "model"}}, schema_version=1)
    manifest = workdir.update_manifest(artefacts={"m2": {"kind": "index"}})
    assert set(manifest["artefacts"]) == {"m1", "m2"} and manifest["schema_version"] == 1
    assert json.loads(workdir.manifest_path.read_text()) == manifest
    assert not list(workdir.root.glob(".manifest.json.*"))  # no temp files left behind
    for d in ("embeddings", "indexes", "datasets"):  # artefact folders come with their first artefact
        assert (workdir.root / d).is_dir()


def test_user_conditions_cannot_reach_files_or_other_databases(tmp_path):
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=4), config=IngestConfig(progress=False))
    secret = tmp_path / "secret.csv"
    secret.write_text("42\n")
    for read_only in (True, False):  # `remove --where` runs on a writable connection
        with Catalog.open(workdir, read_only=read_only) as catalog:
            assert len(catalog.image_ids_where("split IS NOT NULL OR split IS NULL")) == 4
            for condition in (f"id = (SELECT CAST(content AS INT) FROM read_text('{secret}'))",
                              f"id IN (SELECT 1 FROM read_csv('{secret}'))",
                              f"id IN (SELECT 1 FROM '{secret}')"):
                with pytest.raises(ValueError, match="Permission Error"):
                    catalog.image_ids_where(condition)
            with pytest.raises(duckdb.Error):  # nor can a statement turn that off
                catalog.con.execute("SET enable_external_access = true")


def test_report_reads_summarize_the_catalog(tmp_path):
    with Catalog.open(Workdir(tmp_path / "w")) as catalog:
        assert catalog.first_image_id() is None and catalog.splits() == []
        catalog.add_samples([_prepared("a"), _prepared("b", n_captions=3)])
        catalog.add_embedding_rows("m", "image", [1, 2], "shard-0.npy")
        catalog.add_index_version("m", "image", 1, "/x/image-v1.faiss", "Flat", 2)
        run_id = catalog.start_run("index")
        assert catalog.first_image_id() == 1 and catalog.splits() == ["train"]
        assert catalog.split_counts() == [("train", 2)] and catalog.phrase_type_counts() == [("people", 5)]
        assert catalog.caption_word_counts() == [4] * 5  # "caption 0 of a"
        assert catalog.image_files() == [(1, "/x/a.jpg", "ab" * 32), (2, "/x/b.jpg", "ab" * 32)]
        assert set(catalog.dangling_rows().values()) == {0} and catalog.orphan_counts() == []
        assert catalog.models_with_rows() == ["m"] and catalog.indexed_kinds() == [("m", "image")]
        assert catalog.embedding_shards() == [("m", "image", "shard-0.npy", 2, 1, 2)]
        assert catalog.unfinished_runs() == [(run_id, "index")]
        catalog.con.execute("DELETE FROM images WHERE id = 2")  # a removal that did not cascade
        assert catalog.dangling_rows()["captions without their image"] == 3
        assert catalog.orphan_counts() == [("m", "image", 1)]


def test_console_sql_runs_read_only_with_limits_and_waits_for_a_writer(tmp_path, monkeypatch):
    import subprocess
    import sys
    import time

    workdir = Workdir(tmp_path / "w")
    with Catalog.open(workdir) as catalog:
        catalog.add_samples([_prepared("a"), _prepared("b")])
    with Catalog.open_console(workdir.catalog_path) as catalog:
        assert catalog.run_sql("SELECT current_setting('threads')", 10, 5.0).rows == [(1,)]
        result = catalog.run_sql("SELECT id FROM images ORDER BY id;", 1, 5.0)
        assert result.columns == ["id"] and result.rows == [(1,)] and result.truncated
        for sql, message in [("DELETE FROM images", "read-only"), ("SET threads = 8", "configuration"),
                             (f"SELECT * FROM read_csv('{workdir.manifest_path}')", "disabled")]:
            with pytest.raises(ValueError, match=message):
                catalog.run_sql(sql, 10, 5.0)
        with pytest.raises(TimeoutError, match="past 0.2 s"):
            catalog.run_sql("SELECT count(*) FROM range(100000000000) a", 10, 0.2)
        assert catalog.run_sql("SELECT count(*) FROM images", 10, 5.0).rows == [(2,)]  # usable after a stop
    # another process writing: the console waits for it, like every reader, and gives up after the lock timeout
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom warehouse import Catalog\n"
                               f"c = Catalog({str(workdir.catalog_path)!r})\nprint('held', flush=True)\n"
                               "time.sleep(float(sys.argv[1]))\nc.close()", "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("GROUNDEX_LOCK_TIMEOUT", "0.3")
        with pytest.raises(CatalogError, match="held by another process"):
            Catalog.open_console(workdir.catalog_path)
        monkeypatch.setenv("GROUNDEX_LOCK_TIMEOUT", "30")
        started = time.monotonic()
        with Catalog.open_console(workdir.catalog_path) as catalog:
            assert catalog.run_sql("SELECT count(*) FROM images", 10, 5.0).rows == [(2,)]
        assert time.monotonic() - started > 0.5  # it waited for the writer
    finally:
        holder.wait(timeout=30)


def test_no_module_outside_warehouse_runs_sql_of_its_own():
    """The catalog's named methods are the only SQL groundex runs (the console and `--where` go through them)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    raw = re.compile(r"^\s*(import duckdb|from duckdb)|\.query\(|\.con\.|\bduckdb\.connect\(", re.MULTILINE)
    files = [path for package in ("indexer", "heads", "grounding", "ui")
             for path in sorted((root / package).rglob("*.py"))]
    offenders = [f"{path.relative_to(root)}: {m.group(0).strip()}" for path in files
                 for m in raw.finditer(path.read_text())]
    assert offenders == []


def test_a_client_filter_is_one_cheap_condition_over_the_allowed_columns():
    """`groundex serve`'s filters: the parse is DuckDB's own, so what is checked is what would run."""
    from warehouse.client_filter import check_client_condition

    con = duckdb.connect(":memory:")
    columns = ["id", "key", "split", "width", "tags", "added_at"]
    for fine in ["split = 'val'", "key LIKE 'a%' OR key ILIKE '%B'", "id IN (1, 2) AND NOT width < 3",
                 "list_has_all(tags, ?)", "width::BIGINT BETWEEN ? AND 100", "year(added_at) = 2024",
                 "CASE WHEN width > 10 THEN split = 'train' ELSE false END", "regexp_matches(key, '^[0-9]+$')"]:
        check_client_condition(con, fine, columns)
    for bad, message in [("length(repeat(key, 100000000)) > 0", "repeat"), ("id IN (SELECT 1)", "subquery"),
                         ("path = 'x'", "columns only"), ("count(*) > 1", "count_star"),
                         ("sum(width) FILTER (WHERE width > 1) > 1", "sum"), ("main.lower(key) = 'a'", "lower"),
                         ("1=1); DROP TABLE images; --", "bad filter"), ("EXISTS (SELECT 1)", "subquery")]:
        with pytest.raises(InputError, match=re.escape(message)):
            check_client_condition(con, bad, columns)
