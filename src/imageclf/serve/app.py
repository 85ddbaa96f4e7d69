"""The web page and HTTP API over `Predictor`: concurrent requests batched into one forward
pass.

`create_app(model_dir)` returns the ASGI app (FastAPI); `imageclf serve` runs it on uvicorn.
The Open Inference Protocol's routes (v2.py) answer through the same path.
Uploads are decoded and presized in a thread pool, off the event loop, by the same code as
`predict`; the model runs in one inference thread, which takes every image waiting (up to
`max_batch`, after at most `max_wait_ms` for more) into one forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from imageclf import __version__
from imageclf.core.commands import ServeConfig
from imageclf.core.errors import ConfigError, ImageclfError
from imageclf.core.hardware import decoding_pool
from imageclf.data.images import UnreadableImage
from imageclf.model.predict import Prediction, Predictor
from imageclf.openset.rule import calibrated_sentence
from imageclf.run.rundir import read_metrics
from imageclf.serve import v2
from imageclf.serve.batcher import Batcher

log = logging.getLogger(__name__)
access = logging.getLogger("imageclf.serve.access")
# open without the token: the page asks for it, probes need none
PUBLIC = ("/", "/health", *v2.PUBLIC)
# metrics.json fields shown on the model card (never paths, history or skipped files)
CARD_FINAL = ("valid_accuracy", "valid_loss", "accuracy_multi")
CARD_METRICS = ("epochs", "lr", "lr_rule", "precision", "train_img_per_s")


def resolve_model_dir(path: str | Path) -> Path:
    """A model/ folder, or a run directory holding one."""
    p = Path(path)
    if (p / "model.json").is_file():
        return p
    if (p / "model" / "model.json").is_file():
        return p / "model"
    raise ConfigError(f"MODEL_DIR {p} is neither a model/ folder (model.json) nor a run "
                      "directory holding one")


class BodyTooLarge(Exception):
    """The request body passed the upload limit while it was being read."""


class Gate:
    """The ASGI layer every HTTP request passes: the token check (401), the body limit
    (413, by Content-Length, or while streaming when there is none, without reading the
    rest), and one access-log line per request."""

    def __init__(self, app: Any, max_bytes: int, token: str | None,
                 public: tuple[str, ...] = PUBLIC) -> None:
        self.app, self.max_bytes, self.token, self.public = app, max_bytes, token, public

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            refusal = self._refuse(scope["path"], headers)
            if refusal is not None:
                await refusal(scope, receive, sending)
                return
            seen = 0

            async def limited() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_bytes:
                        raise BodyTooLarge
                return message

            await self.app(scope, limited, sending)
        finally:
            images = scope.get("state", {}).get("images", 0)
            access.info("%s %s %d %d %.1fms", scope["method"], scope["path"], status["code"],
                        images, (time.perf_counter() - t0) * 1000)

    def _refuse(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        if self.token and path not in self.public:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return error_response(401, "this server needs a token: send the header "
                                   "'Authorization: Bearer TOKEN'")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return error_response(413, f"the upload is {int(length) / 2**20:.1f} MB; this server "
                               f"takes at most {self.max_bytes / 2**20:.0f} MB per request")
        return None


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def model_name(folder: Path, name: str | None = None) -> str:
    """The name the server gives its model: `name`, or the run's folder (the model/
    folder's own name when it is not inside a run)."""
    if name:
        return name
    return folder.parent.name if (folder.parent / "metrics.json").exists() else folder.name


def page() -> str:
    """The page at /: one self-contained HTML file (no CDN, works offline)."""
    return importlib.resources.files("imageclf.serve").joinpath("static/index.html").read_text()


def model_card(predictor: Predictor, model_dir: Path, tta: bool = False,
               name: str | None = None) -> dict:
    """GET /model: its name, the public part of model.json, how it predicts here (the rule,
    side and TTA in force), and the run's headline metrics."""
    card = {"name": model_name(model_dir, name)}
    card |= {k: v for k, v in predictor.meta.to_json().items() if k != "weights"}
    # the rule in force: --min-confidence may override the stored one
    card |= {"none_rule": predictor.rule.name, "none_threshold": predictor.rule.threshold,
             "none_figure": calibrated_sentence(card.get("open_set"))
             if predictor.rule.name == (card.get("open_set") or {}).get("score") else None,
             "metrics": None, "predict_size": predictor.size, "tta": tta}
    if (model_dir.parent / "metrics.json").exists():
        with contextlib.suppress(ImageclfError):  # a damaged file: no metrics on the card
            m = read_metrics(model_dir.parent)
            card["metrics"] = {k: m.final[k] for k in CARD_FINAL if k in m.final} | {
                k: getattr(m, k) for k in CARD_METRICS}
    return tidy(card)


def tidy(value: object, digits: int = 6) -> object:
    """Floats rounded to `digits` significant digits, recursively: model.json's float32
    normalisation (0.48500001430511475) reads as what it means (0.485)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: tidy(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tidy(v, digits) for v in value]
    return value


def create_app(model_dir: str | Path, config: ServeConfig | None = None, *,
               device: str | torch.device = "cpu", precision: str = "auto",
               min_confidence: float | None = None) -> FastAPI:
    """The ASGI app serving the model in `model_dir` (a model/ folder or a run directory):
    the page at /, POST /predict, GET /health, GET /model, the Open Inference Protocol
    under /v2, OpenAPI docs at /docs."""
    cfg = config or ServeConfig()
    folder = resolve_model_dir(model_dir)
    batcher = Batcher(functools.partial(Predictor, folder, device=device, precision=precision,
                                        min_confidence=min_confidence, size=cfg.size),
                      cfg.max_batch, cfg.max_wait_ms / 1000, tta=cfg.tta)
    predictor = batcher.predictor
    decoders = decoding_pool(min(4, os.cpu_count() or 1))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        decoders.shutdown(wait=False)

    app = FastAPI(title="imageclf", version=__version__, lifespan=lifespan,
                  summary=f"{predictor.meta.arch} over {len(predictor.classes)} classes")
    app.state.batcher, app.state.predictor = batcher, predictor
    if cfg.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cfg.cors_origin],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"])
    app.add_middleware(Gate, max_bytes=int(cfg.max_upload_mb * 2**20), token=cfg.token)
    add_error_handlers(app, cfg)
    answer = _answerer(predictor, batcher, decoders, cfg.top_k)
    _add_routes(app, folder, cfg, answer)
    v2.add_v2_routes(app, model_name(folder, cfg.name), len(predictor.classes), cfg.top_k,
                      predictor.rule.name is not None, cfg.max_files, answer)
    return app


def add_error_handlers(app: FastAPI, cfg: ServeConfig) -> None:
    """Every error a JSON {"error": ...} with its status; tracebacks only in the log."""

    @app.exception_handler(BodyTooLarge)
    async def too_large(_r: Request, e: BodyTooLarge) -> JSONResponse:
        return error_response(413, f"the upload passed {cfg.max_upload_mb:g} MB; this server takes "
                           f"at most {cfg.max_upload_mb:g} MB per request")

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404 and e.detail == "Not Found":  # the router's, not a route's
            return error_response(404, f"no such route: {_r.method} {_r.url.path}")
        if e.status_code == 405:
            return error_response(405, f"{_r.method} is not allowed on {_r.url.path}")
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_r: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, "malformed request")

    @app.exception_handler(Exception)
    async def internal(_r: Request, e: Exception) -> JSONResponse:
        log.exception("error serving %s", _r.url.path)  # the traceback stays in the log
        return error_response(500, "internal error; the server log has the details")


def _answerer(predictor: Predictor, batcher: Batcher, decoders: ThreadPoolExecutor,
              top_k: int) -> v2.Answer:
    """uploads (name, bytes) → one Prediction each, in order: decoded and presized in the
    decoder threads, then batched with every other request's images."""

    async def answer(uploads: list[tuple[str, bytes]]) -> list[Prediction]:
        loop = asyncio.get_running_loop()
        batcher.coming += len(uploads)
        try:
            loaded = await asyncio.gather(*[loop.run_in_executor(decoders, _load, predictor,
                                                                 data) for _, data in uploads])
        finally:
            batcher.coming -= len(uploads)
        answers = await asyncio.gather(*[batcher.submit(x) for x in loaded
                                         if not isinstance(x, str)])
        it = iter(answers)
        return [Prediction(name, error=x) if isinstance(x, str)
                else predictor.answer(name, *next(it), top_k=top_k)
                for (name, _), x in zip(uploads, loaded, strict=True)]

    return answer


def _add_routes(app: FastAPI, folder: Path, cfg: ServeConfig, answer: v2.Answer) -> None:
    """The page, /health, /model and POST /predict over app.state's predictor and batcher."""
    predictor, batcher = app.state.predictor, app.state.batcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page())

    @app.get("/health")
    async def health() -> dict:
        """Liveness, and whether the model is loaded."""
        return {"status": "ok", "model_loaded": True, "batches": batcher.forward_calls,
                "images": batcher.images}

    @app.get("/model")
    async def model() -> dict:
        """The public part of model.json and the run's metrics when known."""
        return model_card(predictor, folder, batcher.tta, cfg.name)

    @app.post("/predict", responses={413: {}, 415: {}, 422: {}, 400: {}})
    async def predict(request: Request) -> JSONResponse:
        """Multipart files (field `file` or `files`), or one image as the raw body with an
        image content type. One object per file, in order, as `imageclf predict --json`;
        a file that cannot be read has `error` instead, beside the others."""
        t0 = time.perf_counter()
        uploads = await _read_uploads(request, cfg)
        request.state.images = len(uploads)
        results = await answer(uploads)
        ms = (time.perf_counter() - t0) * 1000
        status = 200 if any(r.error is None for r in results) else 422  # the client's data
        return JSONResponse([r.to_dict() for r in results], status_code=status,
                            headers={"Server-Timing": f"total;dur={ms:.1f}"})


def _load(predictor: Predictor, data: bytes) -> torch.Tensor | str:
    try:
        return predictor.load(data)
    except UnreadableImage as e:
        return str(e)


async def _read_uploads(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded file; a clear 4xx for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":  # past the size limit: BodyTooLarge, a 413
        return await _multipart(request, cfg)
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [(request.headers.get("x-filename", "upload"), await request.body())]
    raise HTTPException(415, "send the images as multipart/form-data (field 'file' or "
                             "'files') or one image as the body with an image content type; "
                             f"got {kind or 'no content type'}")


async def _multipart(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=cfg.max_files, max_fields=cfg.max_files + 16)
    except HTTPException as e:  # Starlette's parser: a malformed body, or too many files
        if "Too many files" in str(e.detail):
            raise HTTPException(413, f"at most {cfg.max_files} files per request") from None
        raise HTTPException(400, f"malformed multipart body ({e.detail})") from None
    try:
        files = [v for k, v in form.multi_items()
                 if k in ("file", "files") and hasattr(v, "read")]
        if not files:
            raise HTTPException(422, "no file in the request: send it in the field 'file' or "
                                     "'files'")
        return [(Path(f.filename or "upload").name, await f.read()) for f in files]
    finally:
        await form.close()  # spooled parts: their temporary files go now
