"""The Open Inference Protocol (KServe v2, as Triton, KServe and Seldon speak it) beside
/predict: health, server and model metadata, and infer, in JSON or with the binary tensor
extension, over the same batcher, limits and token.

One input, `image`: BYTES, one encoded image file per element (raw bytes with the binary
extension, base64 strings in JSON). Outputs, one row per image: `probs` FP32 (B, C) in
model.json's class order, `labels` BYTES (B,) the decision (`none`, or the labels joined
by ';'), `top_labels` BYTES (B, k) and `top_probs` FP32 (B, k), best first, and
`none_score` FP32 (B,) when the model has a "none of these" rule.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from imageclf import __version__
from imageclf.model.predict import Prediction

HEADER = "inference-header-content-length"  # the binary extension's JSON length
VERSION = "1"
INPUT = "image"
PUBLIC = ("/v2/health/live", "/v2/health/ready")  # probes: open without the token
Answer = Callable[[list[tuple[str, bytes]]], Awaitable[list[Prediction]]]


def model_metadata(name: str, n_classes: int, top_k: int, has_rule: bool) -> dict:
    """GET /v2/models/{name}: the input and outputs with their types and shapes."""
    outputs = [{"name": "probs", "datatype": "FP32", "shape": [-1, n_classes]},
               {"name": "labels", "datatype": "BYTES", "shape": [-1]},
               {"name": "top_labels", "datatype": "BYTES", "shape": [-1, top_k]},
               {"name": "top_probs", "datatype": "FP32", "shape": [-1, top_k]}]
    if has_rule:
        outputs.append({"name": "none_score", "datatype": "FP32", "shape": [-1]})
    return {"name": name, "versions": [VERSION], "platform": "imageclf_pytorch",
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs}


# --- tensors in and out ---------------------------------------------------------------
def split_bytes(raw: bytes) -> list[bytes]:
    """The binary extension's BYTES tensor: each element a 4-byte little-endian length,
    then that many bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ValueError("a BYTES element's length is cut short")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise ValueError(f"a BYTES element of {n} bytes runs past the data")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    """The inverse of `split_bytes`."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for d in data for x in _flatten(d)]
    return [data]


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status, message)


def parse_request(body: bytes, header_length: str | None, max_images: int
                  ) -> tuple[dict, list[bytes]]:
    """(the request's JSON, the images' bytes) from an infer body, JSON alone or with the
    binary extension's data after the JSON header."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _bad(f"{HEADER} is {header_length!r}; the body has {len(body)} bytes")
        body, binary = body[:int(header_length)], body[int(header_length):]
    try:
        req = json.loads(body)
    except ValueError as e:
        raise _bad(f"the request is not JSON ({e})") from None
    inputs = req.get("inputs") if isinstance(req, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"expected one input, {INPUT!r} (BYTES: one encoded image per element)")
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != "BYTES":
        raise _bad(f"expected the input {INPUT!r} of datatype BYTES; got "
                   f"{tensor.get('name')!r} of {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0
                                                      for d in shape)):
        raise _bad(f"input {INPUT!r}: shape must be a list of sizes; got {shape!r}")
    n = math.prod(shape)
    if n == 0:
        raise _bad(f"input {INPUT!r} holds no image")
    if n > max_images:
        raise _bad(f"{n} images in one request; this server takes at most {max_images}", 413)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or size > len(binary):
                raise ValueError(f"binary_data_size {size!r}, {len(binary)} bytes sent")
            images = split_bytes(binary[:size])
        elif "data" in tensor:
            images = [base64.b64decode(s, validate=True) for s in _flatten(tensor["data"])]
        else:
            raise ValueError("neither data nor binary_data_size")
    except (ValueError, TypeError, binascii.Error) as e:
        raise _bad(f"input {INPUT!r}: {e} (send the image files' bytes with the binary "
                   "extension, or base64 strings as JSON data)") from None
    if len(images) != n:
        raise _bad(f"input {INPUT!r}: shape {shape} holds {n} elements; {len(images)} sent")
    return req, images


def output_tensors(results: list[Prediction], n_classes: int, top_k: int,
                   has_rule: bool) -> dict[str, tuple[str, list[int], np.ndarray | list[bytes]]]:
    """name → (datatype, shape, values) of every output, for a batch's predictions."""
    b = len(results)
    probs = np.asarray([r.probs for r in results], dtype="<f4").reshape(b, n_classes)
    top = [r.top + [("", 0.0)] * (top_k - len(r.top)) for r in results]
    out: dict[str, tuple[str, list[int], Any]] = {
        "probs": ("FP32", [b, n_classes], probs),
        "labels": ("BYTES", [b], [";".join(r.labels).encode() for r in results]),
        "top_labels": ("BYTES", [b, top_k], [k.encode() for t in top for k, _ in t]),
        "top_probs": ("FP32", [b, top_k], np.asarray([[p for _, p in t] for t in top],
                                                     dtype="<f4").reshape(b, top_k))}
    if has_rule:
        out["none_score"] = ("FP32", [b], np.asarray([r.none_score for r in results],
                                                     dtype="<f4"))
    return out


def _json_data(datatype: str, values: Any) -> list:
    if datatype == "BYTES":
        return [v.decode() for v in values]
    return values.reshape(-1).tolist()


def _binary_data(datatype: str, values: Any) -> bytes:
    return join_bytes(values) if datatype == "BYTES" else values.tobytes()


def encode_response(req: dict, name: str, tensors: dict) -> Response:
    """The infer response: the requested outputs (every one when none is named), each as
    JSON data or, where asked, binary data after the JSON header."""
    asked = req.get("outputs")
    binary_all = bool((req.get("parameters") or {}).get("binary_data_output", False))
    if asked is None:
        wanted = [(k, binary_all) for k in tensors]
    else:
        if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
            raise _bad("outputs must be a list of objects with a name")
        unknown = [o.get("name") for o in asked if o.get("name") not in tensors]
        if unknown:
            raise _bad(f"no output named {unknown[0]!r}; this model has {', '.join(tensors)}")
        wanted = [(o["name"], bool((o.get("parameters") or {}).get("binary_data",
                                                                   binary_all)))
                  for o in asked]
    outputs, blobs = [], []
    for key, binary in wanted:
        datatype, shape, values = tensors[key]
        entry: dict[str, Any] = {"name": key, "datatype": datatype, "shape": shape}
        if binary:
            blob = _binary_data(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(datatype, values)
        outputs.append(entry)
    head = {"model_name": name, "model_version": VERSION, "outputs": outputs}
    if "id" in req:
        head["id"] = req["id"]
    if not blobs:
        return JSONResponse(head)
    text = json.dumps(head).encode()
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER: str(len(text))})


# --- routes -----------------------------------------------------------------------------
def _add_server_routes(app: FastAPI) -> None:
    """The server's own routes: its metadata and health."""

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict:
        """The server's name, version and protocol extensions."""
        return {"name": "imageclf", "version": __version__,
                "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> dict:
        """Liveness."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> dict:
        """Readiness: the model is loaded before the server listens."""
        return {"ready": True}


def add_v2_routes(app: FastAPI, name: str, n_classes: int, top_k: int, has_rule: bool,
                  max_images: int, answer: Answer) -> None:
    """The v2 routes, answering through `answer` (uploads → predictions: the batcher)."""
    top_k = max(1, min(top_k, n_classes))
    meta = model_metadata(name, n_classes, top_k, has_rule)

    def check(model_name: str, version: str | None) -> None:
        if model_name != name or version not in (None, VERSION):
            asked = model_name + (f" version {version}" if version else "")
            raise _bad(f"no model {asked!r} here; this server serves {name!r} version "
                       f"{VERSION}", 404)

    _add_server_routes(app)

    @app.get("/v2/models/{model_name}", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{version}", tags=["v2"])
    async def metadata(model_name: str, version: str | None = None) -> dict:
        """The model's input and outputs."""
        check(model_name, version)
        return meta

    @app.get("/v2/models/{model_name}/ready", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{version}/ready", tags=["v2"])
    async def model_ready(model_name: str, version: str | None = None) -> dict:
        """Whether the model can answer."""
        check(model_name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model_name}/infer", tags=["v2"])
    @app.post("/v2/models/{model_name}/versions/{version}/infer", tags=["v2"])
    async def infer(model_name: str, request: Request, version: str | None = None
                    ) -> Response:
        """Images in (BYTES), probabilities, labels and none_score out; every image of a
        request must be readable (the protocol answers all or nothing)."""
        check(model_name, version)
        req, images = parse_request(await request.body(), request.headers.get(HEADER),
                                    max_images)
        request.state.images = len(images)
        results = await answer([(f"{INPUT}[{i}]", data) for i, data in enumerate(images)])
        bad = [r for r in results if r.error is not None]
        if bad:
            raise _bad(f"{bad[0].path}: {bad[0].error}"
                       + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return encode_response(req, name, output_tensors(results, n_classes, top_k,
                                                         has_rule))
