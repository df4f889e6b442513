"""The Streamlit app through `streamlit.testing.v1.AppTest`: every page on a small built workdir (search
hits and filters, the image page, phrase -> region, explore, evaluation, the SQL console's refusals), the
page shown without a workdir, uploads' checks, and `groundex ui`'s command line; captions (generated, human, typed,
an upload's) with their phrases underlined and boxed in the colour of their type."""

import io
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageColor
from streamlit.testing.v1 import AppTest

from heads.captioning import Captioner, train_captioner
from heads.chunker import ChunkerConfig, open_chunker
from heads.config import CaptionerConfig
from heads.phrases import train_workdir_chunker
from heads.tagging import tag_workdir
from indexer.evaluate import evaluate_retrieval
from tests.helpers import built_workdir, free_port, start_server, stop_server
from ui.app.console import SqlConsole
from ui.app.data import TYPE_COLOURS, decode_upload, highlighted_caption, phrase_boxes_overlay
from warehouse import Catalog, GeneratedPhrase, Workdir, load_image

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app" / "main.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = built_workdir(tmp_path_factory.mktemp("ui") / "work", n=300, epochs=2)
    evaluate_retrieval(workdir, "val")
    tag_workdir(workdir, "knn")
    train_captioner(workdir, CaptionerConfig(hidden_size=64, layers=1, heads=2, intermediate_size=128, epochs=1),
                    progress=False)
    shutil.copytree(workdir.root, workdir.root.parent / "unchunked")  # the `unchunked` fixture: no chunker yet
    train_workdir_chunker(workdir, ChunkerConfig(epochs=1), progress=False)
    with Catalog.open(workdir) as catalog:
        image_id, _ = catalog.image_rows("val")[0]
        model_id = catalog.models()[0].id
        catalog.replace_generated_captions(GENERATED_BY, [(image_id, GENERATED)], [[
            GeneratedPhrase(("people",), "a person", 0, "chunker0", model_id, (4.0, 6.0, 40.0, 60.0), 0.8),
            GeneratedPhrase(("clothing",), "a red shirt", 3, "chunker0", model_id, (10.0, 20.0, 30.0, 50.0), 0.6),
            GeneratedPhrase(("notvisual",), "the picture", 8, "chunker0")]])
    return workdir


GENERATED_BY = "captioner-under-test"  # a generated caption stored with its grounded phrases, as `caption generate
GENERATED = "a person in a red shirt stands in the picture ."  # --ground` stores them, on the first val image


@pytest.fixture(scope="module")
def unchunked(workdir):
    """The same workdir before `groundex chunk train`: no chunker, no generated phrases."""
    return Workdir(workdir.root.parent / "unchunked")


@pytest.fixture
def app(workdir, monkeypatch):
    monkeypatch.setenv("GROUNDEX_WORKDIR", str(workdir.root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _image_captions(at) -> list[str]:
    return [img.proto.imgs[0].caption for img in at.get("image") if img.proto.imgs]


def _shows_phrase(markdown: str, text: str, types: tuple[str, ...]) -> bool:
    """Whether `markdown` underlines `text` in the colour of `types`, with the types on hover."""
    pattern = rf'solid {TYPE_COLOURS[types[0]]}" title="{re.escape("/".join(types))}[^"]*">{re.escape(text)}</span>'
    return re.search(pattern, markdown, flags=re.IGNORECASE) is not None


def _plain(markdown: str) -> str:
    return re.sub(r"<[^>]+>", "", markdown)


def _grounded_markdown(at) -> list[str]:
    """The captions the pages grounded just now (their phrases' titles carry box scores), not the stored one."""
    return [m.value for m in at.markdown if " · box " in m.value and not m.value.startswith("**generated**")]


def test_search_returns_hits_filters_apply_and_more_like_this_switches_mode(app, workdir):
    app.text_input(key="search_query").input("a red circle").run()
    _ok(app)
    assert len(app.get("image")) == 12  # the default k
    assert "12 images" in app.caption[0].value
    app.slider(key="search_k").set_value(5).run()
    app.selectbox(key="search_split").set_value("val").run()
    _ok(app)
    with Catalog.open(workdir, read_only=True) as catalog:
        val_ids = {i for i, _ in catalog.image_rows("val")}
    shown = [int(m.value.split("image ")[1].split(" ")[0]) for m in app.markdown if " · image " in m.value]
    assert len(shown) == 5 and set(shown) <= val_ids
    assert all("· val" in m.value for m in app.markdown if " · image " in m.value)
    app.text_input(key="search_where").input("id < 0").run()
    assert any("No image matches" in i.value for i in _ok(app).info)
    app.text_input(key="search_where").input("no_such_column = 1").run()
    assert "bad --where condition" in _ok(app).error[0].value
    app.text_input(key="search_where").input("").run()
    like = next(b for b in _ok(app).button if b.label == "similar")
    like.click().run()
    _ok(app)
    assert app.radio(key="search_mode").value == "image → image"
    assert int(app.number_input(key="search_image_id").value) == shown[0]
    app.radio(key="search_mode").set_value("image → text").run()
    assert len(_ok(app).dataframe) == 1


def test_image_page_shows_captions_boxes_tags_and_grounds_a_phrase(app, workdir):
    with Catalog.open(workdir, read_only=True) as catalog:
        image_id, _ = catalog.image_rows("val")[0]
        captions = [t for _, _, t in catalog.caption_rows(image_ids=[image_id])]
        tags = catalog.tags_of([image_id])[image_id]
    app.switch_page("pages/image.py").run()
    app.number_input(key="image_page_id").set_value(image_id).run()
    _ok(app)
    text = " ".join(m.value for m in app.markdown)
    assert all(c.split()[-2] in text for c in captions)  # each caption shown (phrases wrapped in spans)
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == len(tags)  # tags with score and method
    app.text_input(key="image_phrase").input("a red circle").run()
    _ok(app)
    assert any("best patch" in (img.proto.imgs[0].caption if img.proto.imgs else "") for img in app.get("image"))
    app.number_input(key="image_page_id").set_value(10**9).run()
    assert "not in the catalog" in _ok(app).error[0].value


def test_phrase_region_explore_evaluation_pages_render(app, workdir):
    app.switch_page("pages/regions.py").run()
    app.text_input(key="regions_phrase").input("a blue square").run()
    _ok(app)
    assert len(app.get("image")) == 12 and "12 images" in app.caption[0].value
    app.switch_page("pages/explore.py").run()
    _ok(app)
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
    assert app.metric[0].value == f"{counts['images']:,}" and app.metric[2].value == f"{counts['phrases']:,}"
    assert len(app.get("vega_lite_chart")) >= 4  # splits, types, lengths, tags, the map
    app.switch_page("pages/evaluation.py").run()
    _ok(app)
    assert [h.value for h in app.header] == ["Retrieval (recall@K, %)"]  # the fixture ran this evaluation only
    with Catalog.open(workdir, read_only=True) as catalog:
        measured = catalog.runs("eval retrieval", limit=1)[0]["result"]["text_to_image"]["R@10"]
    assert measured in app.dataframe[0].value.to_numpy()


def test_sql_console_reads_and_refuses_writes_attach_and_files(app, workdir):
    app.switch_page("pages/sql.py").run()
    _ok(app)
    assert len(app.dataframe) == 1  # the example query
    for query, message in [("DELETE FROM images", "read-only"), ("CREATE TABLE x (a INT)", "read-only"),
                           ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
                           (f"ATTACH '{workdir.root / 'other.duckdb'}'", "disabled"),
                           ("COPY images TO '/tmp/groundex-leak.csv'", "disabled"),
                           ("SET enable_external_access = true", "configuration")]:
        app.text_area(key="sql_query").input(query).run()
        assert app.error and message in app.error[0].value.lower(), (query, [e.value for e in app.error])
    assert not Path("/tmp/groundex-leak.csv").exists() and not (workdir.root / "other.duckdb").exists()
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.counts()["images"] == 300  # nothing was deleted


def test_console_limits_rows_and_time(workdir):
    console = SqlConsole(workdir.catalog_path, max_rows=10, time_limit_s=0.5)
    result = console.run("SELECT id FROM images ORDER BY id;")
    assert len(result.rows) == 10 and result.truncated and result.columns == ["id"]
    with pytest.raises(TimeoutError, match="past 0.5 s"):
        console.run("SELECT count(*) FROM range(100000000000) a")
    assert console.run("SELECT 1").rows == [(1,)]  # usable after a stopped query
    with pytest.raises(ValueError, match="empty"):
        console.run("  ;")


def test_without_a_built_workdir_the_app_explains_how_to_build_one(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDEX_WORKDIR", str(tmp_path / "nothing"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and "holds no catalog" in at.warning[0].value
    assert "groundex demo" in " ".join(m.value for m in at.markdown)


def test_uploads_are_checked():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
    assert decode_upload("ok.png", buffer.getvalue()).size == (40, 30)
    with pytest.raises(ValueError, match="big.png is .* limited to"):
        decode_upload("big.png", buffer.getvalue(), max_bytes=10)
    with pytest.raises(ValueError, match="empty.png is empty"):
        decode_upload("empty.png", b"")
    with pytest.raises(ValueError, match="notes.txt"):
        decode_upload("notes.txt", b"not an image at all")
    with pytest.raises(ValueError, match="bomb.png"):
        decode_upload("bomb.png", buffer.getvalue(), max_pixels=100)


def test_groundex_ui_builds_the_streamlit_command():
    from ui.cli import build_parser
    from ui.cli.ui import command

    args = build_parser().parse_args(["ui", "--workdir", "/w", "--port", "8600", "--headless", "--",
                                      "--server.address", "127.0.0.1"])
    cmd = command(args)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("ui/app/main.py")
    assert cmd[cmd.index("--server.port") + 1] == "8600" and cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-2:] == ["--server.address", "127.0.0.1"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_groundex_ui_leaves_nothing_behind_on_a_signal(tmp_path, sig):
    """`groundex ui` as a process manager or Ctrl-C stops it: the signal to its process alone (not its group) must
    stop the Streamlit server and free the port (it once ran as an orphan child that kept the port)."""
    port = free_port()
    server = start_server([sys.executable, "-m", "ui.cli", "ui", "--workdir", str(tmp_path / "w"), "--port",
                           str(port), "--headless", "--", "--server.address", "127.0.0.1"],
                          f"http://127.0.0.1:{port}/_stcore/health", tmp_path / "ui.log", timeout_s=60)
    code = stop_server(server, sig, port)
    assert code in (0, -sig), (tmp_path / "ui.log").read_text()[-2000:]


def test_upload_page_tags_captions_grounds_and_finds_similar_images(app, workdir):
    with Catalog.open(workdir, read_only=True) as catalog:
        _, path = catalog.image_rows("val")[0]
    app.switch_page("pages/upload.py").run()
    app.file_uploader(key="upload_file").upload("mine.jpg", Path(path).read_bytes(), "image/jpeg").run()
    _ok(app)
    text = " ".join(m.value for m in app.markdown)
    assert "**knn**:" in text  # the fitted kNN tagger's tags
    scores = [float(m.value.split("**")[1]) for m in app.markdown if " · image " in m.value]
    assert len(scores) == 12 and scores == sorted(scores, reverse=True)
    assert scores[0] > 0.99  # the file is in the catalog, so an image at least as near as itself (cosine ~1) leads
    caption, _ = Captioner(workdir).caption_image(load_image(path), memory="train")  # what the page shows
    chunks = open_chunker(workdir).chunk(caption)
    shown = next(m.value for m in app.markdown if _plain(m.value) == caption)
    assert all(_shows_phrase(shown, c.text, (c.type,)) for c in chunks), (shown, chunks)
    located = [c for c in _image_captions(app) if "phrases located" in c]
    assert len(located) == any(c.type != "notvisual" for c in chunks)  # the grounded phrases' boxes
    assert len(app.get("image")) == 1 + len(located) + 12
    memory = app.selectbox(key="upload_memory")
    assert memory.value == "train" and "all" in memory.options
    memory.select("all").run()
    _ok(app)
    assert app.selectbox(key="upload_memory").value == "all" and not app.error
    app.text_input(key="upload_phrase").input("a red circle").run()
    assert any("best patch" in (img.proto.imgs[0].caption if img.proto.imgs else "") for img in _ok(app).get("image"))
    app.file_uploader(key="upload_file").set_value(("broken.png", b"\x89PNG not really", "image/png")).run()
    assert "broken.png" in _ok(app).error[0].value


def test_a_generated_phrase_is_underlined_at_its_own_words_and_boxed_in_its_colour():
    phrases = [GeneratedPhrase(("animals",), "a dog", 3, "c", "m", (10.0, 10.0, 30.0, 20.0), 0.5)]
    shown = highlighted_caption("a dog sees a dog .", phrases)
    assert shown.startswith("a dog sees <span") and shown.endswith('title="animals · box 0.50">a dog</span> .')
    overlay = phrase_boxes_overlay(Image.new("RGB", (100, 50), "white"), phrases)
    assert overlay.getpixel((20, 10)) == ImageColor.getrgb(TYPE_COLOURS["animals"])  # the box's top edge
    assert overlay.getpixel((20, 15)) == overlay.getpixel((60, 30)) == (255, 255, 255)


def test_image_page_shows_generated_phrases_and_grounds_a_typed_or_picked_caption(app, workdir):
    with Catalog.open(workdir, read_only=True) as catalog:
        image_id, _ = catalog.image_rows("val")[0]
        human = catalog.caption_rows(image_ids=[image_id])[0][2]
    app.switch_page("pages/image.py").run()
    app.number_input(key="image_page_id").set_value(image_id).run()
    _ok(app)
    generated = next(m.value for m in app.markdown if m.value.startswith("**generated**"))
    assert f"captioner {GENERATED_BY[:8]}" in generated and _plain(generated).endswith(GENERATED)
    for text, types in [("a person", ("people",)), ("a red shirt", ("clothing",)), ("the picture", ("notvisual",))]:
        assert _shows_phrase(generated, text, types), text
    assert any("3 phrases found by chunker chunker0; 2 located by model" in c.value for c in app.caption)
    boxes = next(r for r in app.radio if r.label == "boxes of")
    assert boxes.value == "annotated phrases"  # the synthetic image has annotated boxes
    boxes.set_value(f"generated caption ({GENERATED_BY[:8]})").run()
    assert any("the generated caption's phrases" in c for c in _image_captions(_ok(app)))
    legend = next(m.value for m in app.markdown if "■" in m.value)
    assert "■ people" in legend and "■ clothing" in legend and "notvisual" not in legend  # the boxes drawn

    app.text_input(key="image_caption").input(human).run()
    _ok(app)
    chunks = open_chunker(workdir).chunk(human)
    assert chunks
    [grounded] = _grounded_markdown(app)
    assert _plain(grounded) == human and all(_shows_phrase(grounded, c.text, (c.type,)) for c in chunks)
    assert any("phrases located" in c for c in _image_captions(app))
    next(s for s in app.selectbox if s.label == "caption").set_value(GENERATED).run()
    assert [_plain(m) for m in _grounded_markdown(_ok(app))] == [GENERATED]


def test_without_a_chunker_the_pages_say_how_to_train_one(unchunked, monkeypatch):
    monkeypatch.setenv("GROUNDEX_WORKDIR", str(unchunked.root))
    at = _ok(AppTest.from_file(APP, default_timeout=180).run())
    at.switch_page("pages/image.py").run()
    assert any("groundex chunk train" in i.value for i in _ok(at).info)
    assert not any(s.label == "caption" for s in at.selectbox) and not any(r.label == "boxes of" for r in at.radio)
    with Catalog.open(unchunked, read_only=True) as catalog:
        _, path = catalog.image_rows("val")[0]
    at.switch_page("pages/upload.py").run()
    at.file_uploader(key="upload_file").upload("mine.jpg", Path(path).read_bytes(), "image/jpeg").run()
    assert any("no phrase chunker yet" in c.value for c in _ok(at).caption)
    assert not any("phrases located" in c for c in _image_captions(at))
