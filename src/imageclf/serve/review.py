"""`imageclf review AUDIT`: a page over an audit's findings, and the API that saves each
decision (keep, relabel, exclude) to AUDIT/fixes.csv the moment it is made.

The server is the one writer of fixes.csv: each decision re-reads the file, sets that
image's row and writes the whole file atomically, under a lock, so a reload, a crash or a
second tab loses nothing (of two tabs deciding on one image, the later decision stands).
Images are served only when an audit row names them, read from the audited data set, and
re-encoded as a small JPEG: no other path of the machine can be reached."""

from __future__ import annotations

import importlib.resources
import io
import threading
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from imageclf import __version__
from imageclf.core.commands import ServeConfig
from imageclf.core.errors import ConfigError, DataError
from imageclf.data import refs
from imageclf.data.audit_files import FIXES, read_issues, read_summary
from imageclf.data.fixes import DECISIONS, Fix, latest, read_fixes, write_fixes
from imageclf.data.images import UnreadableImage, open_rgb
from imageclf.serve.app import Gate, add_error_handlers

SHOWN = 320  # the side of the pictures the page shows
UNDECIDED = "undecided"  # a decision taken back: the image's row leaves fixes.csv


class Decision(BaseModel):
    """POST /api/decision's body."""

    image: str
    decision: str
    label: str = ""


def review_page() -> str:
    """The page at /: one self-contained HTML file."""
    return importlib.resources.files("imageclf.serve").joinpath(
        "static/review.html").read_text()


class Decisions:
    """fixes.csv, held by one writer."""

    def __init__(self, path: Path, classes: tuple[str, ...], given: dict[str, str]) -> None:
        self.path, self.classes, self.given = path, classes, given
        self.lock = threading.Lock()
        if path.exists():
            self._read()  # a damaged file is refused now, not at the first decision

    def _read(self) -> dict[str, Fix]:
        return latest(read_fixes(self.path)) if self.path.exists() else {}

    def all(self) -> dict[str, Fix]:
        with self.lock:
            return self._read()

    def decide(self, d: Decision) -> int:
        """Record one decision; the number of images decided."""
        if d.image not in self.given:
            raise HTTPException(404, f"{d.image!r} is not an image of this audit")
        if d.decision not in (*DECISIONS, UNDECIDED):
            raise HTTPException(400, f"decision must be one of {', '.join(DECISIONS)} or "
                                     f"{UNDECIDED}; got {d.decision!r}")
        label = d.label.strip() if d.decision == "relabel" else ""
        if d.decision == "relabel":
            unknown = [n for n in label.split() if n not in self.classes]
            if not label or unknown:
                raise HTTPException(400, f"relabel needs a class of this data set "
                                         f"({', '.join(self.classes)}); got {d.label!r}")
        with self.lock:
            fixes = self._read()
            if d.decision == UNDECIDED:
                fixes.pop(d.image, None)
            else:
                fixes[d.image] = Fix(d.image, d.decision, label, self.given[d.image],
                                     datetime.now().astimezone().isoformat(timespec="seconds"))
            write_fixes(self.path, list(fixes.values()))
            return len(fixes)


def _thumbnail(ref: refs.ImageRef) -> bytes:
    im = open_rgb(refs.read(ref), min_short_side=SHOWN)
    im.thumbnail((SHOWN, SHOWN))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def image_ref(key: str, root: Path) -> refs.ImageRef:
    """The image an audit's key names, inside the audited folder `root`; a key that would
    leave it ('..', an absolute path, a link pointing out) is refused."""
    if "\x00" in key or key.startswith(("/", "\\")) or ".." in Path(key).parts:
        raise HTTPException(403, "images are served only from inside the audited data set")
    if refs.STORE_MARK in key or refs.ROW_MARK in key:
        ref = refs.parse(str(root / key))
        inside = refs.backing_file(ref)
    else:
        ref = inside = root / key
    real, base = inside.resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise HTTPException(403, "images are served only from inside the audited data set")
    return ref


def create_review_app(folder: str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app reviewing the audit in `folder`."""
    from imageclf.data.fixes import key_root

    cfg = config or ServeConfig()
    folder = Path(folder)
    summary = read_summary(folder)
    issues = read_issues(folder)
    root = key_root(summary.data)
    if not root.exists():
        raise ConfigError(f"the audited data set {summary.data} is not there any more; audit "
                          "it again where it is now")
    given = {r.image: r.given for r in issues}
    known = set(given) | {r.duplicate_of for r in issues if r.duplicate_of}
    decisions = Decisions(folder / FIXES, summary.classes, given)
    app = FastAPI(title="imageclf review", version=__version__)
    app.add_middleware(Gate, max_bytes=int(cfg.max_upload_mb * 2**20), token=cfg.token,
                       public=("/", "/health"))
    add_error_handlers(app, cfg)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return review_page()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/audit")
    def audit() -> dict:
        return {"summary": summary.to_json(), "issues": [r.to_json() for r in issues],
                "decisions": {k: f.__dict__ for k, f in decisions.all().items()}}

    @app.get("/api/image")
    def image(key: str) -> Response:
        ref = image_ref(key, root)  # 403 outside the data set, before anything is read
        if key not in known:
            raise HTTPException(404, f"{key!r} is not an image of this audit")
        try:
            return Response(_thumbnail(ref), media_type="image/jpeg",
                            headers={"cache-control": "private, max-age=3600"})
        except (UnreadableImage, DataError, OSError) as e:
            raise HTTPException(404, f"{key}: cannot be read ({e})") from None

    @app.post("/api/decision")
    def decide(d: Decision) -> JSONResponse:
        n = decisions.decide(d)
        return JSONResponse({"saved": True, "decided": n, "file": str(decisions.path)})

    return app
