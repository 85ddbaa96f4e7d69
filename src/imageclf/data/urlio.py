"""Bytes at a URL: `http(s)://`, `file://`, or anything fsspec opens; a whole stream, or one
byte range. A store fetched from a URL remembers its base address here (remote.json)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from imageclf.core.errors import ConfigError, DataError

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


TIMEOUT_S = 60


def is_url(text: str | Path | None) -> bool:
    """A URL (scheme://...) rather than a local path."""
    return text is not None and bool(URL.match(str(text)))


def open_url(url: str) -> IO[bytes]:
    """A binary stream of `url`, read as it arrives: urllib for http(s), the file for
    file://, fsspec for any other scheme."""
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - the user's
        if url.startswith("file://"):
            return open(urllib.request.url2pathname(url[len("file://"):]), "rb")  # noqa: SIM115
    except (OSError, urllib.error.URLError) as e:
        raise DataError(f"cannot open {url}: {getattr(e, 'reason', None) or e}") from e
    try:
        import fsspec
    except ImportError as e:
        raise ConfigError(f"{url}: the {url.split('://')[0]} scheme needs fsspec "
                          "(pip install fsspec and its filesystem's package)") from e
    try:
        return fsspec.open(url, "rb").open()
    except Exception as e:  # noqa: BLE001 - each filesystem raises its own kinds
        raise DataError(f"cannot open {url}: {e}") from e


def read_range(url: str, offset: int, size: int) -> bytes:
    """`size` bytes of `url` from `offset`: one ranged request where the server supports it,
    else read past the bytes before."""
    headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
    if url.startswith(("http://", "https://")):
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),  # noqa: S310
                                          timeout=TIMEOUT_S)
        except (OSError, urllib.error.URLError) as e:
            raise DataError(f"cannot open {url}: {getattr(e, 'reason', None) or e}") from e
        with resp:
            if resp.status != 206:  # the whole file came: skip to the offset
                left = offset
                while left > 0:
                    chunk = resp.read(min(left, 2**20))
                    if not chunk:
                        break
                    left -= len(chunk)
            return resp.read(size)
    with open_url(url) as f:
        f.seek(offset)
        return f.read(size)


REMOTE = "remote.json"  # in the local folder a remote store's manifest and index are fetched to


def remote_base(folder: Path) -> str | None:
    """The URL of the store whose manifest and index were fetched into `folder`."""
    try:
        return json.loads((folder / REMOTE).read_text())["base"]
    except (OSError, ValueError, KeyError):
        return None
