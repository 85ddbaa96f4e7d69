"""Serving: the HTTP API in process (answers, batching, bad input, limits, the token), and
the real server as a program: a browser on its page, SIGTERM with requests in flight."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imageclf.model.predict import Predictor
from imageclf.serve.app import ServeConfig, create_app

from .helpers import add_bad_files, chromium, free_port


def _files(run_dir: Path) -> list[Path]:
    """One validation image per class (a run_dir's data: blue, green, red)."""
    data = run_dir.parent / "data" / "valid"
    return [sorted((data / c).glob("*.jpg"))[0] for c in ("blue", "green", "red")]


def _post(app, *requests: dict, headers: dict | None = None) -> list[httpx.Response]:
    """Send the requests concurrently to the app, in process."""
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers=headers or {}) as client:
            return await asyncio.gather(*[client.request(**({"method": "POST",
                                                             "url": "/predict"} | r))
                                          for r in requests])
    return asyncio.run(go())


def _get(app, url: str, headers: dict | None = None) -> httpx.Response:
    return _post(app, {"method": "GET", "url": url}, headers=headers)[0]


def _clean(r: httpx.Response, *secrets: str) -> None:
    """No traceback or server path in an answer."""
    assert "Traceback" not in r.text and all(s not in r.text for s in secrets), r.text


def test_answers_equal_the_predictors(run_dir: Path):
    app = create_app(run_dir, device="cpu", precision="fp32")  # a run directory is accepted
    files = _files(run_dir)
    ref = Predictor(run_dir / "model", precision="fp32").predict(files, top_k=3)
    multi = _post(app, {"files": [("files", (f.name, f.read_bytes(), "image/jpeg"))
                                  for f in files]})[0]
    assert multi.status_code == 200 and "total;dur=" in multi.headers["server-timing"]
    raw = _post(app, *[{"content": f.read_bytes(), "headers": {"content-type": "image/jpeg"}}
                       for f in files])
    for got in (multi.json(), [r.json()[0] for r in raw]):
        assert [g["labels"] for g in got] == [r.labels for r in ref]
        for g, r in zip(got, ref, strict=True):
            assert [t["label"] for t in g["top"]] == [k for k, _ in r.top]
            assert [t["prob"] for t in g["top"]] == pytest.approx([p for _, p in r.top],
                                                                  abs=1e-5)
    assert [g["path"] for g in multi.json()] == [f.name for f in files]  # the client's names
    card = _get(app, "/model").json()
    assert card["classes"] == ["blue", "green", "red"] and card["arch"] == "resnet18"
    assert card["mean"] == [0.485, 0.456, 0.406] and card["std"] == [0.229, 0.224, 0.225]
    assert 0 <= card["metrics"]["valid_accuracy"] <= 1
    assert card["tta"] is False and card["predict_size"] == ref_size(run_dir)
    assert _get(app, "/health").json()["model_loaded"] is True


def ref_size(run_dir: Path) -> int:
    return json.loads((run_dir / "model" / "model.json").read_text())["size"]


def test_tta_and_size_answer_as_the_predictor(run_dir: Path):
    size = ref_size(run_dir) + 8
    app = create_app(run_dir, ServeConfig(tta=True, size=size), precision="fp32")
    files = _files(run_dir)
    ref = Predictor(run_dir / "model", precision="fp32", size=size).predict(files, tta=True)
    plain = Predictor(run_dir / "model", precision="fp32").predict(files)
    got = _post(app, {"files": [("files", (f.name, f.read_bytes(), "image/jpeg"))
                                for f in files]})[0].json()
    for g, r, p in zip(got, ref, plain, strict=True):
        assert [t["prob"] for t in g["top"]] == pytest.approx([q for _, q in r.top], abs=1e-5)
        # the views and the size change the answer: the test can tell them apart
        assert [t["prob"] for t in g["top"]] != pytest.approx([q for _, q in p.top], abs=1e-5)
    card = _get(app, "/model").json()
    assert card["tta"] is True and card["predict_size"] == size


def test_concurrent_requests_share_forward_passes(run_dir: Path):
    app = create_app(run_dir / "model", ServeConfig(max_batch=16, max_wait_ms=300),
                     precision="fp32")
    files = _files(run_dir) * 3  # 9 requests, three classes
    ref = {f: p.labels for f, p in zip(files, Predictor(run_dir / "model", precision="fp32")
                                       .predict(files), strict=True)}
    answers = _post(app, *[{"files": {"file": (f.name, f.read_bytes(), "image/jpeg")}}
                           for f in files])
    calls = app.state.batcher.forward_calls
    assert 1 <= calls < len(files), calls  # batched
    assert app.state.batcher.images == len(files)
    for f, a in zip(files, answers, strict=True):  # each caller got its own answer
        assert a.status_code == 200 and a.json()[0]["labels"] == ref[f]


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(run_dir: Path,
                                                                  tmp_path: Path):
    app = create_app(run_dir, ServeConfig(max_upload_mb=1, max_files=3), precision="fp32")
    bad = tmp_path / "bad"
    reasons = add_bad_files(bad)
    good = _files(run_dir)[0]

    def upload(path: Path) -> dict:
        return {"files": {"file": (path.name, path.read_bytes(), "application/octet-stream")}}

    for name in ("empty.jpg", "truncated.jpg", "text.jpg", "bomb.png"):
        r = _post(app, upload(bad / name))[0]
        assert r.status_code == 422, (name, r.text)
        assert reasons[name] in r.json()[0]["error"], (name, r.text)
        _clean(r, str(tmp_path), str(run_dir))
    mixed = _post(app, {"files": [("files", ("ok.jpg", good.read_bytes(), "image/jpeg")),
                                  ("files", ("text.jpg", b"not an image", "image/jpeg"))]})[0]
    assert mixed.status_code == 200  # per-file errors beside the good results
    assert "labels" in mixed.json()[0] and "not an image" in mixed.json()[1]["error"]
    cases = [
        ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 422, "empty file"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
         "multipart/form-data"),
        ({"content": b"garbage, no boundary line", "headers": {
            "content-type": "multipart/form-data; boundary=x"}}, 400, "malformed"),
        ({"files": [("files", (f"{i}.jpg", good.read_bytes(), "image/jpeg"))
                    for i in range(4)]}, 413, "at most 3 files"),
        ({"files": {"other": ("a.jpg", good.read_bytes(), "image/jpeg")}}, 422, "no file"),
        ({"content": b"\0" * (2 * 2**20), "headers": {"content-type": "image/jpeg"}}, 413,
         "at most 1 MB"),
        ({"method": "GET", "url": "/nowhere"}, 404, "no such route"),
        ({"method": "GET", "url": "/predict"}, 405, "not allowed"),
    ]
    for request, status, needle in cases:
        r = _post(app, request)[0]
        body = r.json()  # a file's own error sits in its object; a request's stands alone
        error = body["error"] if isinstance(body, dict) else body[0]["error"]
        assert r.status_code == status and needle in error, (request.keys(), r.text)
        _clean(r, str(tmp_path), str(run_dir))
    assert _post(app, upload(good))[0].status_code == 200  # still serving


def test_an_upload_over_the_limit_is_refused_without_reading_it_all(run_dir: Path):
    """No Content-Length (a chunked upload): the server stops reading at the limit."""
    app = create_app(run_dir, ServeConfig(max_upload_mb=1), precision="fp32")
    sent = []

    async def body():
        for _ in range(64):  # 64 MB offered
            sent.append(1)
            yield b"\0" * 2**20

    r = _post(app, {"content": body(), "headers": {"content-type": "image/jpeg"}})[0]
    assert r.status_code == 413 and "at most 1 MB" in r.json()["error"]
    assert len(sent) <= 3


def test_the_token(run_dir: Path):
    app = create_app(run_dir, ServeConfig(token="s3cret"), precision="fp32")
    good = _files(run_dir)[0]
    req = {"content": good.read_bytes(), "headers": {"content-type": "image/jpeg"}}
    r = _post(app, req)[0]
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    assert _post(app, req, headers={"Authorization": "Bearer wrong"})[0].status_code == 401
    assert _post(app, req, headers={"Authorization": "Bearer s3cret"})[0].status_code == 200
    assert _get(app, "/model").status_code == 401 and _get(app, "/docs").status_code == 401
    assert _get(app, "/health").status_code == 200 and _get(app, "/").status_code == 200
    assert _get(app, "/model", {"Authorization": "Bearer s3cret"}).status_code == 200


def test_none_of_these_reports_its_score_and_threshold(run_dir: Path):
    app = create_app(run_dir, precision="fp32", min_confidence=0.999999)
    a = _post(app, {"content": _files(run_dir)[0].read_bytes(),
                    "headers": {"content-type": "image/jpeg"}})[0].json()[0]
    assert a["labels"] == ["none"] and a["none_rule"] == "msp"
    assert a["none_score"] < a["none_threshold"] == pytest.approx(0.999999)



def _serve(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "imageclf", "serve", str(model), "--port",
                          str(port), "--precision", "fp32", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            time.sleep(0.2)
    p.kill()
    raise AssertionError("the server did not start")


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(run_dir: Path):
    p, url = _serve(run_dir, "--max-wait-ms", "1500", "--max-batch", "64")
    files = _files(run_dir) * 2

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(
                url + "/predict", content=f.read_bytes(),
                headers={"content-type": "image/jpeg"}) for f in files])

    async def go() -> list[httpx.Response]:
        task = asyncio.ensure_future(many())
        await asyncio.sleep(0.7)  # the requests wait in the 1.5 s batching window
        p.send_signal(signal.SIGTERM)
        return await task

    answers = asyncio.run(go())
    out, err = p.communicate(timeout=60)
    assert [a.status_code for a in answers] == [200] * len(files), err
    assert p.returncode == 0, err
    assert err.count("POST /predict 200") == len(files)  # the access log, a line a request



@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium (.ci/run installs it)")
def test_a_browser_on_the_page(run_dir: Path, tmp_path: Path):
    """Debian's headless Chromium driven by Playwright: upload through the file input, the
    top label shown is the API's; a non-image shows the server's message; a screenshot."""
    from playwright.sync_api import sync_playwright

    p, url = _serve(run_dir)
    image = _files(run_dir)[2]
    api = httpx.post(url + "/predict", content=image.read_bytes(),
                     headers={"content-type": "image/jpeg"}).json()[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(),
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(url + "/")
            page.wait_for_selector("#card dd")
            page.set_input_files("#file", str(image))
            page.wait_for_selector(".bar")
            assert page.inner_text("#answer") == api["labels"][0]
            assert page.inner_text(".bar .label") == api["top"][0]["label"]
            acc = httpx.get(url + "/model").json()["metrics"]["valid_accuracy"]  # the card
            assert f"{100 * acc:.1f}%" in page.inner_text("#card")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.set_input_files("#file", str(text))
            page.wait_for_selector(".error")
            assert "not an image" in page.inner_text(".error")
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
            browser.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    with Image.open(tmp_path / "page.png") as im:
        assert im.size[0] == 390


def test_a_port_in_use_or_a_missing_model_is_one_line(run_dir: Path, tmp_path: Path):
    from .helpers import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", str(run_dir), "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    r = run_cli("serve", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "neither a model/ folder" in r.stderr
    r = run_cli("serve", str(run_dir), "--max-batch", "0")
    assert r.returncode == 2 and "--max-batch (max_batch in ServeConfig) must be >= 1" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium (.ci/run installs it)")
def test_the_page_labels_the_bars_under_none_of_these_as_closest(run_dir: Path,
                                                                 tmp_path: Path):
    """When the answer is none, the bars under it are the closest classes, drawn plain."""
    from playwright.sync_api import sync_playwright

    p, url = _serve(run_dir, "--min-confidence", "0.999999")  # every answer: none
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(),
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(url + "/")
            page.wait_for_selector("#card dd")
            page.set_input_files("#file", str(_files(run_dir)[0]))
            page.wait_for_selector(".bar")
            assert page.inner_text(".answer") == "None of these"
            assert "Closest classes" in page.inner_text("#closest")
            fills = page.eval_on_selector_all(".bar .fill", "els => els.map(e => e.className)")
            assert fills and all("plain" in c for c in fills)
            label = page.get_attribute(".bar .track", "aria-label")
            assert label.startswith("closest: ")
            page.screenshot(path=str(tmp_path / "none.png"), full_page=True)
            browser.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
