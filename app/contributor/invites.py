"""Turn what a volunteer pastes (a page URL, an invite link, a ``barnraise://`` link) into a target.

Accepted forms (docs/protocol.md, "Invite links"):

- ``https://HOST/p/NAME`` — the project's page; enough for open projects;
- ``https://HOST/p/NAME?invite=CODE`` — the page with an invite code;
- ``barnraise://join?url=<urlencoded page URL>&invite=CODE`` — the app link a page offers;
- any of the above with the coordinator mounted under a path prefix
  (``https://HOST/prefix/p/NAME``), a trailing slash, or surrounding whitespace.

Parsing never touches the network; ``InviteError`` says what was wrong and what to paste.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from federated.protocol import is_project_name

__all__ = ["InviteError", "JoinTarget", "parse_join_target"]

# Invite codes are opaque to the client; this only keeps control characters and
# separators out of what we send back to the server.
_INVITE_RE = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
_APP_SCHEME = "barnraise"


class InviteError(ValueError):
    """The text is not a project page URL or invite link."""


@dataclass(frozen=True)
class JoinTarget:
    """Where a project lives: ``server_url`` (scheme://host[:port][/prefix]) and its name."""

    server_url: str
    project: str
    invite: str | None = None

    @property
    def api_base(self) -> str:
        return f"{self.server_url}/api/v1"

    @property
    def page_url(self) -> str:
        return f"{self.server_url}/p/{self.project}"

    @property
    def host(self) -> str:
        return urlsplit(self.server_url).hostname or ""


def _hint() -> str:
    return (
        "paste the project's page address (https://HOST/p/NAME), an invite link "
        "(https://HOST/p/NAME?invite=CODE) or a barnraise://join link"
    )


def _check_invite(code: str | None) -> str | None:
    if code is None or code == "":
        return None
    if not _INVITE_RE.match(code):
        raise InviteError(f"the invite code {code!r} has characters an invite never has; {_hint()}")
    return code


def _parse_page_url(text: str, invite: str | None) -> JoinTarget:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise InviteError(f"{text!r} is not an http(s) address; {_hint()}")
    if not parts.hostname:
        raise InviteError(f"{text!r} has no host name; {_hint()}")
    path = parts.path.rstrip("/")
    prefix, sep, name = path.rpartition("/p/")
    if not sep or "/" in name:
        raise InviteError(f"{text!r} is not a project page (expected …/p/NAME); {_hint()}")
    if not is_project_name(name):
        raise InviteError(
            f"{name!r} is not a project name (lowercase letters, digits and '-', up to 63); {_hint()}"
        )
    query = parse_qs(parts.query)
    if invite is None and query.get("invite"):
        invite = query["invite"][0]
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never carry user:password into the server URL
    server_url = f"{parts.scheme}://{netloc}{prefix}"
    return JoinTarget(server_url=server_url, project=name, invite=_check_invite(invite))


def parse_join_target(text: str) -> JoinTarget:
    """Parse a page URL, an invite link or a ``barnraise://join`` link; raise InviteError."""
    text = text.strip()
    if not text:
        raise InviteError(f"nothing to join; {_hint()}")
    parts = urlsplit(text)
    if parts.scheme == _APP_SCHEME:
        # barnraise://join?url=...: "join" is the netloc for the // form, the path otherwise.
        action = (parts.netloc or parts.path).strip("/")
        if action != "join":
            raise InviteError(
                f"{text!r}: the app understands only barnraise://join links; {_hint()}"
            )
        query = parse_qs(parts.query)
        urls = query.get("url")
        if not urls:
            raise InviteError(f"{text!r} names no project page (url=...); {_hint()}")
        invites = query.get("invite")
        return _parse_page_url(urls[0], _check_invite(invites[0]) if invites else None)
    return _parse_page_url(text, None)
