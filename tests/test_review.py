"""imageclf review: the API saves every decision to fixes.csv at once; images only from the
audited data set; the page in a browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from imageclf.core.commands import AuditSettings, ServeConfig
from imageclf.core.config import DataConfig, DataSource, TrainConfig
from imageclf.data.fixes import read_fixes
from imageclf.data.sources import resolve
from imageclf.jobs.audit import audit
from imageclf.serve.review import create_review_app

from .audit_data import FLIPPED, LEAK, make_audit_dataset, random_body
from .helpers import chromium, free_port


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("review")
    data = make_audit_dataset(tmp / "data")
    body = random_body(tmp / "body")
    return audit(DataConfig.build(path=str(data), size=32, presize=48, bs=16),
                 TrainConfig.build(precision="fp32"),
                 AuditSettings(model=str(body), stray_share=0.1),
                 tmp / "audit").out


@pytest.fixture
def client(audited: Path) -> TestClient:
    (audited / "fixes.csv").unlink(missing_ok=True)
    return TestClient(create_review_app(audited))


def _not_flagged(c: TestClient) -> str:
    """An image of the data set that no audit row names."""
    a = c.get("/api/audit").json()
    named = {r["image"] for r in a["issues"]} | {r["duplicate_of"] for r in a["issues"]}
    data = Path(a["summary"]["data"])
    return next(p.relative_to(data).as_posix() for p in sorted(data.rglob("*.jpg"))
                if p.relative_to(data).as_posix() not in named)


def _decide(c: TestClient, image: str, decision: str, label: str = "", **kw) -> httpx.Response:
    return c.post("/api/decision", json={"image": image, "decision": decision,
                                         "label": label}, **kw)


def test_each_decision_is_in_fixes_csv_at_once(client: TestClient, audited: Path):
    a = client.get("/api/audit").json()
    assert a["summary"]["counts"]["label"] == len([r for r in a["issues"]
                                                   if r["kind"] == "label"])
    flips = sorted(FLIPPED)
    assert _decide(client, flips[0], "relabel", "red").json()["decided"] == 1
    assert _decide(client, flips[1], "exclude").json()["decided"] == 2
    assert _decide(client, LEAK[0], "keep").json()["decided"] == 3
    rows = {f.image: f for f in read_fixes(audited / "fixes.csv")}
    assert (rows[flips[0]].decision, rows[flips[0]].label, rows[flips[0]].given) == (
        "relabel", "red", "blue")
    assert rows[flips[1]].decision == "exclude" and rows[LEAK[0]].decision == "keep"
    # a fresh server (a reload, a crash and a restart) starts from the file
    again = TestClient(create_review_app(audited)).get("/api/audit").json()["decisions"]
    assert set(again) == {flips[0], flips[1], LEAK[0]}
    # taken back
    assert _decide(client, LEAK[0], "undecided").json()["decided"] == 2
    # training reads them
    data = a["summary"]["data"]
    items = resolve(DataSource(path=data, fixes=str(audited / "fixes.csv")))
    assert items.fixed_by.relabelled == 1 and items.fixed_by.excluded == 1


def test_two_tabs_keep_the_later_decision_and_lose_no_other(client: TestClient,
                                                            audited: Path):
    flips = sorted(FLIPPED)
    other = TestClient(client.app)  # a second tab on the same server
    _decide(client, flips[0], "relabel", "red")
    _decide(other, flips[1], "exclude")
    _decide(other, flips[0], "keep")
    threads = [threading.Thread(target=_decide, args=(c, flips[2], d))
               for c, d in ((client, "exclude"), (other, "exclude"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {f.image: f.decision for f in read_fixes(audited / "fixes.csv")}
    assert rows == {flips[0]: "keep", flips[1]: "exclude", flips[2]: "exclude"}


def test_bad_decisions_are_refused_with_the_reason(client: TestClient):
    flip = sorted(FLIPPED)[0]
    r = _decide(client, flip, "relabel", "purple")
    assert r.status_code == 400 and "relabel needs a class" in r.json()["error"]
    assert _decide(client, flip, "rename").status_code == 400
    r = _decide(client, _not_flagged(client), "exclude")  # in the data set, not the audit
    assert r.status_code == 404 and "not an image of this audit" in r.json()["error"]


def test_images_come_only_from_the_audited_data_set(client: TestClient, audited: Path,
                                                    tmp_path: Path):
    ok = client.get("/api/image", params={"key": sorted(FLIPPED)[0]})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert client.get("/api/image", params={"key": LEAK[1]}).status_code == 200  # its copy
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(ok.content)
    for key in ("../../../etc/passwd", "/etc/passwd", str(secret), "train/../../x.jpg"):
        r = client.get("/api/image", params={"key": key})
        assert r.status_code == 403, key
    data = Path(client.get("/api/audit").json()["summary"]["data"])
    (data / "train" / "out.jpg").symlink_to(secret)  # a link pointing out
    try:
        assert client.get("/api/image", params={"key": "train/out.jpg"}).status_code == 403
    finally:
        (data / "train" / "out.jpg").unlink()
    assert client.get("/api/image", params={"key": _not_flagged(client)}).status_code == 404


def test_the_token_and_the_body_limit(audited: Path):
    c = TestClient(create_review_app(audited, ServeConfig(token="s3", max_upload_mb=0.001)))
    assert c.get("/").status_code == 200  # the page asks for the token itself
    assert c.get("/api/audit").status_code == 401
    auth = {"Authorization": "Bearer s3"}
    assert c.get("/api/audit", headers=auth).status_code == 200
    r = c.post("/api/decision", headers=auth, json={"image": "x" * 5000, "decision": "keep"})
    assert r.status_code == 413


def test_a_folder_that_is_no_audit_is_one_line(tmp_path: Path):
    from .helpers import run_cli

    r = run_cli("review", str(tmp_path))
    assert r.returncode == 2 and "holds no audit" in r.stderr




@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium (.ci/run installs it)")
def test_ten_decisions_in_the_browser_survive_a_reload(audited: Path, tmp_path: Path):
    """Headless Chromium: ten decisions by keys and clicks, a reload shows them, and
    fixes.csv holds them."""
    from playwright.sync_api import sync_playwright

    (audited / "fixes.csv").unlink(missing_ok=True)
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "imageclf", "review", str(audited), "--port",
                          str(port)], stdout=log, stderr=log, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert p.poll() is None, (tmp_path / "server.log").read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(),
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url + "/")
            page.wait_for_selector(".card")
            cards = page.locator(".card")
            n_label = cards.count()
            decided = []
            # keys on the label tab: accept the suggestion, keep, exclude...
            for key in ("a", "g", "x")[:min(3, n_label)]:
                image = cards.nth(len(decided)).get_attribute("data-image")
                page.keyboard.press(key)
                page.wait_for_selector(f'.card[data-image="{image}"][data-decision]:not('
                                       '[data-decision=""])')
                decided.append(image)
            # ...then clicks on the other tabs until ten images are decided
            for kind in ("stray", "leak", "duplicate", "label"):
                page.click(f'#kinds button[data-kind="{kind}"]')
                page.wait_for_timeout(100)
                for i in range(page.locator(".card").count()):
                    if len(decided) == 10:
                        break
                    card = page.locator(".card").nth(i)
                    image = card.get_attribute("data-image")
                    if image in decided:
                        continue
                    card.locator("button.exclude").click()
                    page.wait_for_selector(f'.card[data-image="{image}"]'
                                           '[data-decision="exclude"]')
                    decided.append(image)
            assert len(decided) == 10, decided
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            page.reload()
            page.wait_for_selector(".card")
            for kind in ("stray", "leak", "duplicate", "label"):
                page.click(f'#kinds button[data-kind="{kind}"]')
                page.wait_for_timeout(100)
                for i in range(page.locator(".card").count()):
                    card = page.locator(".card").nth(i)
                    if card.get_attribute("data-image") in decided:
                        assert card.get_attribute("data-decision") in ("keep", "exclude",
                                                                       "relabel")
            browser.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        log.close()
    assert {f.image for f in read_fixes(audited / "fixes.csv")} == set(decided)


def test_an_image_gone_since_the_audit_is_a_clear_404(client: TestClient):
    key = sorted(FLIPPED)[0]
    data = Path(client.get("/api/audit").json()["summary"]["data"])
    moved = data / key
    moved.rename(moved.with_suffix(".away"))
    try:
        r = client.get("/api/image", params={"key": key})
        assert r.status_code == 404 and "cannot be read" in r.json()["error"]
        assert _decide(client, key, "exclude").status_code == 200  # still decidable
    finally:
        moved.with_suffix(".away").rename(moved)
