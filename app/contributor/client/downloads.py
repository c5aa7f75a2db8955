"""Model downloads into the cache: resumed with Range after a cut, checked against the digest."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from app.contributor.cache import touch as touch_cached_model
from app.contributor.client.errors import _CUT_SHORT, Cancelled, IntegrityError, UnavailableError

if TYPE_CHECKING:
    from app.contributor.client.coordinator_client import CoordinatorClient

__all__ = ["DOWNLOAD_CHUNK", "download_model"]

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 256 * 1024


def download_model(client: CoordinatorClient, digest: str) -> Path:
    """Fetch the model with ``digest`` into ``client``'s cache (resuming a partial download
    with Range) and return its path; the file is checked against the digest before use. The
    file is marked used now, so ``ModelCache.enforce`` evicts it last."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise IntegrityError(f"{digest!r} is not a sha256 digest")
    final = client.model_path(digest)
    if final.exists():
        if _file_sha256(final) == digest:
            touch_cached_model(final)
            return final
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".part")
    url = f"{client.api}/models/{digest}"
    for attempt in range(client.retry.attempts):
        have = partial.stat().st_size if partial.exists() else 0
        if have and _file_sha256(partial) == digest:
            os.replace(partial, final)
            touch_cached_model(final)
            return final
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{digest}"'} if have else {}
        try:
            response = client.request("GET", url, headers=headers, stream=True)
            with response:
                # 206: the rest of what we have; 200: the server ignored Range, start over.
                mode = "ab" if response.status_code == 206 else "wb"
                with open(partial, mode) as out:
                    for chunk in response.iter_content(DOWNLOAD_CHUNK):
                        if client.cancel.is_set():
                            raise Cancelled("download cancelled")
                        out.write(chunk)
        except _CUT_SHORT as exc:
            # A body cut midway: what arrived stays in the .part file and the next try
            # asks only for the rest.
            log.info("download of %s interrupted: %s; resuming", digest[:12], exc)
            client._sleep(client.retry.delay(attempt))
            continue
        if _file_sha256(partial) != digest:
            partial.unlink(missing_ok=True)
            if attempt + 1 < client.retry.attempts:
                continue
            raise IntegrityError(
                f"the model the coordinator sent does not match its digest {digest[:12]}…; "
                "it was discarded and will be fetched again"
            )
        os.replace(partial, final)
        touch_cached_model(final)
        return final
    raise UnavailableError(f"could not download model {digest[:12]}… from {client.server_url}")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
