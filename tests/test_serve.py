"""`groundex serve`: the endpoints through the ASGI test client, clip-retrieval's clip back protocol as its client
speaks it, bad requests (each a 4xx JSON error, the server still up), and one real server process over plain HTTP."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.helpers import built_workdir, free_port, image_bytes, start_server, stop_server

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ui.serve import ServeOptions, create_app  # noqa: E402
from ui.serve.service import Filters, decode_image  # noqa: E402
from warehouse import ImageError  # noqa: E402

pytestmark = pytest.mark.slow  # a trained workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from heads.captioning import train_captioner
    from heads.config import CaptionerConfig
    from heads.tagging import tag_workdir

    workdir = built_workdir(tmp_path_factory.mktemp("serve") / "w", n=80, epochs=1)
    tag_workdir(workdir, "knn", progress=False)
    train_captioner(workdir, CaptionerConfig(hidden_size=64, layers=1, heads=2, intermediate_size=128, epochs=1),
                    progress=False)
    return workdir


@pytest.fixture(scope="module")
def client(workdir):
    with TestClient(create_app(workdir, ServeOptions(max_k=50))) as client:  # runs start-up and shutdown
        yield client
    assert not client.app.state.service.catalogs.is_open  # shut down: the catalog let go


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["error"] and "Traceback" not in body["error"]
    assert response.headers["x-request-id"] == body["request_id"]
    return body["error"]


def test_health_and_models(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["indexes"]["image"] >= 1  # warm: the image index version it serves
    models = client.get("/models").json()
    assert [m["serving"] for m in models].count(True) == 1 and models[0]["indexes"]["image"] > 0


def test_text_search_returns_k_hits_with_urls_this_server_answers(client):
    out = client.post("/search", json={"text": "a red circle", "k": 5}).json()
    assert len(out["hits"]) == 5 and all(h["url"].endswith(f"/images/{h['image_id']}/thumbnail") for h in out["hits"])
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    thumb = client.get(out["hits"][0]["url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    meta = client.get(f"/images/{out['hits'][0]['image_id']}").json()
    assert meta["captions"] and meta["phrases"] and "path" not in meta  # never a file path


def test_every_query_input_finds_the_same_space(client, workdir):
    from indexer.search import Searcher

    searcher = Searcher(workdir)
    vector = searcher.text_vector("a blue square").tolist()
    by_text = [h["id"] for h in client.post("/search", json={"text": "a blue square", "k": 5}).json()["hits"]]
    by_vector = [h["id"] for h in client.post("/search", json={"embedding": vector, "k": 5}).json()["hits"]]
    assert by_text == by_vector
    first = by_text[0]
    similar = client.post("/search", json={"image_id": first, "k": 5}).json()["hits"]
    assert first not in [h["id"] for h in similar] and len(similar) == 5
    png = image_bytes((96, 96), (200, 30, 30), fmt="PNG")
    as_json = client.post("/search", json={"image": base64.b64encode(png).decode(), "k": 3}).json()["hits"]
    as_upload = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "3"}).json()["hits"]
    assert [h["id"] for h in as_json] == [h["id"] for h in as_upload]
    captions = client.post("/search", json={"image_id": first, "k": 4, "modality": "text"}).json()["hits"]
    assert len(captions) == 4 and all(h["text"] for h in captions)


def test_filters_are_applied_inside_the_search(client):
    hits = client.post("/search", json={"text": "a dog", "k": 10, "split": "val"}).json()["hits"]
    assert hits and all(h["split"] == "val" for h in hits)
    hits = client.post("/search", json={"text": "a dog", "k": 10, "where": "split = 'train'"}).json()["hits"]
    assert hits and all(h["split"] == "train" for h in hits)
    where = "split IN ('val', 'test') AND lower(key) LIKE '%' AND width BETWEEN 1 AND 10000 AND NOT (id < 0)"
    hits = client.post("/search", json={"text": "a dog", "k": 10, "where": where}).json()["hits"]
    assert hits and {h["split"] for h in hits} <= {"val", "test"}


@pytest.mark.parametrize("request_body, status, match", [
    ({"text": "x", "image_id": 1}, 400, "exactly one"),
    ({}, 400, "exactly one"),
    ({"image": "not base64!!"}, 400, "base64"),
    ({"image": base64.b64encode(b"GIF89a broken").decode()}, 400, "image"),
    ({"text": "x", "k": 100000}, 400, "k must be between"),
    ({"text": "x", "k": "many"}, 400, "k"),
    ({"image_id": 10**9}, 400, "not in the catalog"),
    ({"embedding": [1.0, 2.0]}, 400, "embedding"),
    ({"text": "x", "where": "1=1; DROP TABLE images"}, 400, ""),
    ({"text": "x", "where": "read_csv('/etc/passwd') IS NOT NULL"}, 400, ""),
    # a client's filter: the image's columns and cheap functions only (this one would take all the memory)
    ({"text": "x", "where": "length(repeat(key, 100000000)) > 0"}, 400, "may not call repeat()"),
    ({"text": "x", "where": "id IN (SELECT image_id FROM captions)"}, 400, "subquery"),
    ({"text": "x", "where": "(SELECT min(path) FROM images) LIKE '/%'"}, 400, "subquery"),
    ({"text": "x", "where": "images.id = 1"}, 400, "columns only"),
    ({"text": "x", "where": "1=1) UNION SELECT 1 FROM images WHERE (1=1"}, 400, "UNION"),
    ({"text": "x", "where": "row_number() OVER () < 3"}, 400, "window"),
    ({"text": "x", "where": "length(list_value(" + ", ".join(["key"] * 100) + ")::VARCHAR) > 0"}, 400, "at most 64"),
    ({"text": "x", "where": "CAST(NULL AS BIGINT[100000][100000]) IS NULL"}, 400, "scalar types"),
    ({"text": "x", "where": "split = ?"}, 400, "placeholders"),
    ({"text": "x", "where": "id > 0 OR " * 300 + "id > 0"}, 400, "at most 2,000 characters"),
    ({"text": "x", "modality": "audio"}, 400, "modality"),
], ids=lambda x: None)
def test_bad_requests_get_a_json_4xx_and_the_server_stays_up(client, request_body, status, match):
    assert match in _error(client.post("/search", json=request_body), status)
    assert client.get("/health").status_code == 200


def test_a_writer_gets_the_catalog_while_clients_query_without_pause(client, workdir):
    """The server reads the catalog through one shared connection; a writer in another process (here one that
    records a run; `groundex index` is the load benchmark's) still gets the file, and no request fails."""
    import threading

    stop, statuses = threading.Event(), []

    def ask() -> None:
        while not stop.is_set():
            statuses.append(client.post("/search", json={"text": "a red dog", "k": 3, "split": "train"}).status_code)
            statuses.append(client.get("/images/1").status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        writer = subprocess.run([sys.executable, "-c", "import sys\nfrom warehouse import Catalog, Workdir\n"
                                 "with Catalog.open(Workdir(sys.argv[1])) as c:\n    c.start_run('test-writer')",
                                 str(workdir.root)], env={**os.environ, "GROUNDEX_LOCK_TIMEOUT": "30"},
                                capture_output=True, text=True, timeout=120)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert writer.returncode == 0, writer.stderr[-2000:]
    assert len(statuses) > 8 and set(statuses) == {200}


def test_bodies_that_are_not_json_or_too_big_are_refused(workdir):
    client = TestClient(create_app(workdir, ServeOptions(max_body_bytes=1000, warm=False)))
    _error(client.post("/search", content=b"{not json"), 400)
    _error(client.post("/search", content=b"[1, 2]"), 400)
    _error(client.post("/search", json={"text": "x" * 2000}), 413)
    assert "not found" in _error(client.get("/images/999999999"), 404)


def test_a_token_is_required_when_set(workdir):
    client = TestClient(create_app(workdir, ServeOptions(token="s3cret-token-0123456789", warm=False)))
    assert client.get("/health").status_code == 200  # liveness stays open
    _error(client.post("/search", json={"text": "x"}), 401)
    _error(client.post("/search", json={"text": "x"}, headers={"Authorization": "Bearer wrong"}), 401)
    ok = client.post("/search", json={"text": "x", "k": 2},
                     headers={"Authorization": "Bearer s3cret-token-0123456789"})
    assert ok.status_code == 200 and len(ok.json()["hits"]) == 2


# -- clip-retrieval's clip back -------------------------------------------------------------------------------------

def _clip_client_body(**fields) -> bytes:
    """The document clip-retrieval's ClipClient posts: every field present, sent as the raw body (no Content-Type)."""
    doc = {"text": None, "image": None, "image_url": None, "embedding_input": None, "deduplicate": True,
           "use_safety_model": False, "use_violence_detector": False, "indice_name": None, "use_mclip": False,
           "aesthetic_score": 9, "aesthetic_weight": 0.5, "modality": "image", "num_images": 5,
           "num_result_ids": 5}
    return json.dumps({**doc, **fields}).encode()


def test_knn_service_answers_clip_retrieval_s_client(client):
    names = client.get("/indices-list").json()
    assert len(names) == 1
    out = client.post("/knn-service", content=_clip_client_body(text="a red circle", indice_name=names[0]))
    assert out.status_code == 200, out.text
    hits = out.json()
    assert 1 <= len(hits) <= 5 and all(set(h) == {"id", "similarity", "url", "caption"} for h in hits)
    assert all(h["url"].startswith("http") and "/images/" in h["url"] for h in hits)
    similarities = [h["similarity"] for h in hits]
    assert similarities == sorted(similarities, reverse=True)
    texts = client.post("/knn-service", content=_clip_client_body(text="a red circle", modality="text")).json()
    assert texts and all(h["caption"] for h in texts)
    meta = client.post("/metadata", content=json.dumps({"ids": [hits[0]["id"]], "indice_name": names[0]}).encode())
    assert meta.json() == [{"id": hits[0]["id"], "metadata": {"url": hits[0]["url"], "caption": hits[0]["caption"]}}]
    ids = [h["id"] for h in hits][::-1]
    meta = client.post("/metadata", content=json.dumps({"ids": [*ids, 10**9]}).encode()).json()
    assert [m["id"] for m in meta] == ids  # in the order asked; an id not in the catalog is left out
    assert all(m["metadata"]["caption"] == client.get(f"/images/{m['id']}").json()["captions"][0] for m in meta)
    _error(client.post("/metadata", content=json.dumps({"ids": [10**30]}).encode()), 400)


def test_knn_service_deduplicates_near_identical_images(client, workdir):
    from indexer.shards import load_embeddings
    from warehouse import Catalog

    plain = client.post("/knn-service", content=_clip_client_body(text="a circle", deduplicate=False,
                                                                  num_images=20, num_result_ids=20)).json()
    dedup = client.post("/knn-service", content=_clip_client_body(text="a circle", deduplicate=True,
                                                                  num_images=20, num_result_ids=20)).json()
    with Catalog.open(workdir, read_only=True) as catalog:
        model_id = catalog.model().id
    ids, vectors = load_embeddings(workdir, model_id, "image", [h["id"] for h in plain])
    unit = {int(i): v / np.linalg.norm(v) for i, v in zip(ids, vectors, strict=True)}
    kept = [h["id"] for h in dedup]
    assert kept == [h["id"] for h in plain if h["id"] in set(kept)]  # the order of the plain ranking
    for a in range(len(kept)):  # no two kept images are near-duplicates ...
        assert all(unit[kept[a]] @ unit[kept[b]] < 0.99 for b in range(a))
    for h in plain:  # ... and every dropped one is a near-duplicate of a better kept one
        if h["id"] not in kept:
            assert any(unit[h["id"]] @ unit[k] >= 0.99 for k in kept), h


def test_knn_service_refuses_what_it_cannot_do(client):
    _error(client.post("/knn-service", content=_clip_client_body(text="x", indice_name="nope")), 404)
    _error(client.post("/knn-service", content=_clip_client_body(text="x", num_images=10**6)), 400)


def test_decode_image_and_filters_without_a_server():
    png = image_bytes((10, 10), fmt="PNG")
    assert decode_image("data:image/png;base64," + base64.b64encode(png).decode()).size == (10, 10)
    with pytest.raises(ImageError, match="pixels"):
        decode_image(image_bytes((100, 100), fmt="PNG"), max_pixels=50)
    condition = Filters(split="val", tags=("dog", "red"), where="width > 10").condition()
    assert condition.sql == "split = ? AND list_has_all(tags, ?) AND (width > 10)"
    assert condition.params == ("val", ("dog", "red"))
    assert Filters().condition() is None


# -- a real server ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_real_server_speaks_plain_http_and_leaves_nothing_behind_on_a_signal(workdir, tmp_path, sig):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server([sys.executable, "-m", "ui.cli", "serve", "--workdir", str(workdir.root), "--port",
                           str(port)], f"{base}/health", tmp_path / "serve.log")
    try:
        # exactly as clip-retrieval's client posts: the JSON document as the body, no Content-Type header
        request = urllib.request.Request(f"{base}/knn-service", data=_clip_client_body(text="a red circle"),
                                         method="POST")
        request.remove_header("Content-type")
        with urllib.request.urlopen(request, timeout=30) as r:
            hits = json.loads(r.read())
        assert hits and hits[0]["url"].startswith(base)
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/search", data=b"{oops", method="POST"), timeout=30)
            raise AssertionError("a broken body was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and "error" in json.loads(e.read())
    finally:
        code = stop_server(server, sig, port)
    assert code in (0, -sig), (tmp_path / "serve.log").read_text()[-2000:]


def test_serve_refuses_other_addresses_without_a_token(tmp_path, capsys):
    from ui.cli import main

    assert main(["serve", "--workdir", str(tmp_path / "w"), "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("abc")
    assert main(["serve", "--workdir", str(tmp_path / "w"), "--host", "0.0.0.0", "--token-file", str(short)]) == 2
    assert "at least 16" in capsys.readouterr().err


def test_ground_a_phrase_in_one_image_and_across_the_collection(client):
    hit = client.post("/search", json={"text": "a red circle", "k": 1}).json()["hits"][0]
    one = client.post("/ground", json={"phrase": "a red circle", "image_id": hit["image_id"]})
    assert one.status_code == 200, one.text
    [g] = one.json()["results"]
    assert g["image_id"] == hit["image_id"] and "path" not in g and g["url"].endswith("/thumbnail")
    assert 0 <= g["point"][0] <= g["width"] and 0 <= g["point"][1] <= g["height"] and g["boxes"]
    heatmap = np.array(g["heatmap"])
    assert heatmap.ndim == 2 and -1 <= g["score"] <= 1  # the box head's scores; the score is a cosine
    png = image_bytes((120, 90), (30, 30, 200), fmt="PNG")
    upload = client.post("/ground", json={"phrase": "a blue square", "image": base64.b64encode(png).decode()})
    [u] = upload.json()["results"]
    assert u["image_id"] is None and (u["width"], u["height"]) == (120, 90)
    many = client.post("/ground", json={"phrase": "a red circle", "k": 3, "split": "train"}).json()["results"]
    assert len(many) == 3 and all(r["split"] == "train" for r in many)
    scores = [r["score"] for r in many]
    assert scores == sorted(scores, reverse=True)
    _error(client.post("/ground", json={"phrase": "", "image_id": hit["image_id"]}), 400)
    _error(client.post("/ground", json={"phrase": "x", "image_id": 1, "image": base64.b64encode(png).decode()}), 400)


def test_tags_and_captions_of_a_catalog_image_and_of_an_upload(client):
    image_id = client.post("/search", json={"text": "a red circle", "k": 1}).json()["hits"][0]["image_id"]
    png = base64.b64encode(image_bytes((64, 64), (200, 30, 30), fmt="PNG")).decode()
    for query in ({"image_id": image_id}, {"image": png}):
        tags = client.post("/tags", json=query)
        assert tags.status_code == 200, tags.text
        assert set(tags.json()["tags"]) == {"knn"}  # the one tagger fitted
        assert all(set(t) == {"keyword", "score"} for t in tags.json()["tags"]["knn"])
        caption = client.post("/caption", json=query).json()
        assert isinstance(caption["caption"], str) and caption["captioner_id"]
        assert isinstance(caption["retrieved"], list)
    wider = client.post("/caption", json={"image_id": image_id, "memory": "all"}).json()
    assert wider["memory"] == "all" and wider["retrieved"]
    _error(client.post("/caption", json={"image_id": image_id, "memory": "no-such-split"}), 400)
    _error(client.post("/caption", json={"image_id": image_id, "memory": 3}), 400)
    _error(client.post("/tags", json={}), 400)
    _error(client.post("/caption", json={"image_id": "seven"}), 400)
    _error(client.post("/caption", json={"image_id": image_id, "image": png}), 400)


def test_image_url_is_fetched_only_when_the_operator_allows_it(workdir, tmp_path):
    import functools
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "red.png").write_bytes(image_bytes((64, 64), (200, 30, 30), fmt="PNG"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=site.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site.server_address[1]}/red.png"
    try:
        allowed = TestClient(create_app(workdir, ServeOptions(allow_url_fetch=True, warm=False)))
        hits = allowed.post("/knn-service", content=_clip_client_body(image_url=url, deduplicate=False)).json()
        assert len(hits) == 5
        _error(allowed.post("/knn-service", content=_clip_client_body(image_url=url + ".missing")), 400)
        _error(allowed.post("/knn-service", content=_clip_client_body(image_url="file:///etc/passwd")), 400)
        refused = TestClient(create_app(workdir, ServeOptions(warm=False)))
        assert "--allow-url-fetch" in _error(refused.post("/knn-service", content=_clip_client_body(image_url=url)),
                                             400)
    finally:
        site.shutdown()


def test_limits_and_error_shapes_hold_on_every_path(workdir, tmp_path):
    client = TestClient(create_app(workdir, ServeOptions(max_body_bytes=2000, warm=False)))

    def chunks(data: bytes):
        yield from (data[i:i + 500] for i in range(0, len(data), 500))

    big = image_bytes((200, 200), (10, 200, 30), fmt="BMP")  # 120 kB, sent without a Content-Length
    boundary = "b0undary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.bmp\"\r\n"
                 f"Content-Type: image/bmp\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    _error(client.post("/search", content=chunks(multipart),
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}), 413)
    _error(client.post("/search", content=chunks(json.dumps({"text": "x" * 5000}).encode())), 413)
    _error(client.get("/no-such-endpoint"), 404)
    _error(client.get("/images/abc"), 400)
    _error(client.get(f"/images/{10**30}"), 400)
    # `path` is not a column to a client: no probing where the files are
    assert "path" in _error(client.post("/search", json={"text": "x", "where": "path LIKE '/%'"}), 400)


def test_a_catalog_file_that_went_missing_is_a_500_that_names_no_path(workdir):
    from warehouse import Catalog

    client = TestClient(create_app(workdir, ServeOptions(warm=False)), raise_server_exceptions=False)
    with Catalog.open(workdir, read_only=True) as catalog:
        image_id, path = catalog.image_rows()[-1]
    moved = path + ".moved"
    os.rename(path, moved)
    try:
        message = _error(client.get(f"/images/{image_id}/thumbnail"), 500)
        assert path not in message and "request id" in message
    finally:
        os.rename(moved, path)


def test_a_browser_preflight_passes_the_token_check_and_gets_cors_headers(workdir):
    client = TestClient(create_app(workdir, ServeOptions(token="s3cret-token-0123456789", warm=False,
                                                         cors_origins=("http://localhost:3000",))))
    preflight = client.options("/search", headers={"Origin": "http://localhost:3000",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    _error(client.post("/search", json={"text": "x"}, headers={"Origin": "http://localhost:3000"}), 401)
