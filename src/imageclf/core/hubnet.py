"""Whether the model hub can be reached: its address and one connection attempt."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


def hub_endpoint() -> str:
    """The Hub's address: $HF_ENDPOINT, as huggingface_hub reads it, or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")



def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host accepts a connection within `timeout` seconds."""
    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False
