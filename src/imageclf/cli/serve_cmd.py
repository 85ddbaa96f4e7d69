"""The serve command: the model on a page and an HTTP API."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket

from imageclf.cli import options as o
from imageclf.cli.options import console
from imageclf.core.commands import ServeConfig


@o.settings_command
def serve(model: o.ServeModelArg, config: ServeConfig, host: o.Host = "127.0.0.1",
          port: o.Port = 8000, min_confidence: o.MinConfidence = None,
          device: o.Device = "auto", precision: o.Precision = "auto") -> None:
    """Serve the model: a page at /, an HTTP API and the Open Inference Protocol, batching
    concurrent requests.

    The API: POST /predict, GET /health and GET /model; the protocol's routes under /v2
    (health, metadata, infer); docs at /docs. Ctrl-C or SIGTERM drains the requests in
    flight, then exits."""
    import uvicorn

    from imageclf.core.hardware import pick_device
    from imageclf.serve.app import create_app

    o.check_device(device)
    dev = pick_device(device)
    cfg = dataclasses.replace(config, token=config.token or os.environ.get("IMAGECLF_TOKEN")
                              or None)
    check_port(host, port)
    app = create_app(model, cfg, device=dev, precision=precision,
                     min_confidence=min_confidence)
    access = logging.getLogger("imageclf.serve.access")
    access.setLevel(logging.INFO)
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.propagate = False
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {app.state.predictor.folder} on http://{shown}:{port}/ "
                  f"({dev.type}, {app.state.predictor.precision.name}; token "
                  f"{'required' if cfg.token else 'not required'}); Ctrl-C to stop")
    # uvicorn drains in-flight requests on SIGINT/SIGTERM, then raises the signal again for
    # the handlers it found: these let the command end with exit code 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30)
    console.print("stopped")


def check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be listened on."""
    from imageclf.core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another "
                              "--port, or stop what uses it") from None
