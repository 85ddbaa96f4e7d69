"""The Open Inference Protocol (v2) in serve: a real client (tritonclient) gets /predict's
answers, in JSON and with the binary extension; health, metadata, errors, limits, token."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from imageclf.serve.app import ServeConfig, create_app
from imageclf.serve.v2 import join_bytes, split_bytes

from .helpers import add_bad_files
from .test_serve import _files, _get, _post

http = pytest.importorskip("tritonclient.http")


@contextlib.contextmanager
def _server(app) -> Iterator[str]:
    """The app on uvicorn in a thread, on a free loopback port; yields host:port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _text(x: bytes | str) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON."""
    return x.decode() if isinstance(x, bytes) else x


def _infer(client, name: str, files: list[Path], binary: bool):
    data = np.array([f.read_bytes() if binary else base64.b64encode(f.read_bytes())
                     for f in files], dtype=np.object_)
    tensor = http.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [http.InferRequestedOutput(n, binary_data=binary)
               for n in ("probs", "labels", "top_labels", "top_probs")]
    return client.infer(name, [tensor], outputs=outputs)


def test_tritonclient_gets_predicts_answers(run_dir: Path):
    app = create_app(run_dir, ServeConfig(name="colours", top_k=3), precision="fp32")
    files = _files(run_dir)
    ref = _post(app, {"files": [("files", (f.name, f.read_bytes(), "image/jpeg"))
                                for f in files]})[0].json()
    with _server(app) as url:
        client = http.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("colours") and not client.is_model_ready("other")
        meta = client.get_model_metadata("colours")
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"]: o["shape"] for o in meta["outputs"]}["probs"] == [-1, 3]
        for binary in (True, False):  # the binary extension, and base64 in JSON
            res = _infer(client, "colours", files, binary)
            probs = res.as_numpy("probs")
            assert probs.dtype == np.float32 and probs.shape == (3, 3)
            labels = [_text(x) for x in res.as_numpy("labels")]
            assert labels == [";".join(r["labels"]) for r in ref]
            top = res.as_numpy("top_labels")
            assert [[_text(x) for x in row] for row in top] == [
                [t["label"] for t in r["top"]] for r in ref]
            np.testing.assert_allclose(res.as_numpy("top_probs"),
                                       [[t["prob"] for t in r["top"]] for r in ref], atol=1e-5)
            np.testing.assert_allclose(probs.max(1), [r["top"][0]["prob"] for r in ref],
                                       atol=1e-5)
        client.close()
    assert _get(app, "/model").json()["name"] == "colours"


def test_none_score_is_an_output_when_the_model_has_a_rule(run_dir: Path):
    app = create_app(run_dir, precision="fp32", min_confidence=0.999999)
    files = _files(run_dir)
    ref = _post(app, {"files": [("files", (f.name, f.read_bytes(), "image/jpeg"))
                                for f in files]})[0].json()
    name = run_dir.name  # the default name: the run's folder
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3, 1],
                        "data": [base64.b64encode(f.read_bytes()).decode() for f in files]}],
            "id": "req-7"}
    r = _post(app, {"url": f"/v2/models/{name}/infer", "json": body})[0]
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "req-7" and r.json()["model_name"] == name
    assert out["labels"]["data"] == ["none"] * 3
    np.testing.assert_allclose(out["none_score"]["data"], [x["none_score"] for x in ref],
                               atol=1e-5)
    assert out["probs"]["shape"] == [3, 3] and len(out["probs"]["data"]) == 9


def test_binary_response_layout_by_hand(run_dir: Path):
    """The binary extension as the protocol writes it, without a client library."""
    app = create_app(run_dir, precision="fp32")
    f = _files(run_dir)[0]
    raw = join_bytes([f.read_bytes()])
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "probs", "parameters": {"binary_data": True}},
                                   {"name": "labels"}]}).encode()
    r = _post(app, {"url": f"/v2/models/{run_dir.name}/infer", "content": head + raw,
                    "headers": {"Inference-Header-Content-Length": str(len(head)),
                                "content-type": "application/octet-stream"}})[0]
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    probs_meta, labels_meta = meta["outputs"]
    assert probs_meta["parameters"]["binary_data_size"] == 12 and "data" not in probs_meta
    probs = np.frombuffer(r.content[n:n + 12], dtype="<f4")
    assert probs.sum() == pytest.approx(1, abs=1e-5) and len(labels_meta["data"]) == 1
    assert split_bytes(join_bytes([b"ab", b"", b"xyz"])) == [b"ab", b"", b"xyz"]


def test_bad_requests_get_clear_errors(run_dir: Path, tmp_path: Path):
    app = create_app(run_dir, ServeConfig(max_files=2), precision="fp32")
    bad = add_bad_files(tmp_path / "bad")
    good = base64.b64encode(_files(run_dir)[0].read_bytes()).decode()
    url = f"/v2/models/{run_dir.name}/infer"

    def body(data: list[str], name: str = "image", dtype: str = "BYTES") -> dict:
        return {"json": {"inputs": [{"name": name, "datatype": dtype, "shape": [len(data)],
                                     "data": data}]}, "url": url}

    truncated = base64.b64encode((tmp_path / "bad" / "truncated.jpg").read_bytes()).decode()
    cases = [
        (body([good], name="input0"), 400, "expected the input 'image'"),
        (body([good], dtype="UINT8"), 400, "of datatype BYTES"),
        (body(["not base64!"]), 400, "base64"),
        (body([good, truncated]), 400, "image[1]"),
        (body([good] * 3), 413, "at most 2"),
        (body([]), 400, "no image"),
        ({"url": url, "content": b"{nope", "headers": {"content-type": "application/json"}},
         400, "not JSON"),
        ({"url": "/v2/models/other/infer", "json": {"inputs": []}}, 404, "no model 'other'"),
        ({"url": f"/v2/models/{run_dir.name}/versions/9/infer", "json": {}}, 404,
         "version 1"),
        ({**body([good]), "json": {**body([good])["json"], "outputs": [{"name": "x"}]}}, 400,
         "no output named 'x'"),
    ]
    for req, status, needle in cases:
        r = _post(app, req)[0]
        assert r.status_code == status and needle in r.json()["error"], (req, r.text)
        assert "Traceback" not in r.text
    # the unreadable file's reason comes from the same decoder as /predict's
    r = _post(app, body([good, truncated]))[0]
    assert bad["truncated.jpg"] in r.json()["error"]
    assert _post(app, body([good]))[0].status_code == 200  # still serving


def test_token_guards_v2_but_not_its_health(run_dir: Path):
    app = create_app(run_dir, ServeConfig(token="s3cret"), precision="fp32")
    assert _get(app, "/v2/health/live").json() == {"live": True}
    assert _get(app, "/v2/health/ready").status_code == 200
    assert _get(app, f"/v2/models/{run_dir.name}").status_code == 401
    ok = _get(app, f"/v2/models/{run_dir.name}", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["name"] == run_dir.name
    assert httpx.codes.is_success(_get(app, "/v2", headers={
        "Authorization": "Bearer s3cret"}).status_code)
