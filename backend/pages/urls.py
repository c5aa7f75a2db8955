"""The absolute URL a volunteer pastes into the app, built from the WSGI request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from wsgiref.util import application_uri


def absolute_url(environ: Mapping[str, Any], path: str) -> str:
    """``https://host[:port][/script]`` + ``path``, as the client reached this server.

    Honours ``HTTP_HOST`` and ``wsgi.url_scheme`` (set them from a trusted proxy's
    ``X-Forwarded-*`` headers in the router if the backend runs behind one). The result is
    shown on a page, where it is escaped; it is never used for redirects.
    """
    base = application_uri(dict(environ)).rstrip("/")
    return base + "/" + path.lstrip("/")
