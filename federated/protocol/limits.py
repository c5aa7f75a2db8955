"""Size and time limits both programs rely on; each is named once here."""

from __future__ import annotations

MAX_JSON_BODY_BYTES = 64 * 1024
"""A JSON request body larger than this is refused (413) before it is parsed."""

MAX_MANIFEST_HEADER_BYTES = 16 * 1024
"""The base64 ``X-Barnraise-Manifest`` header larger than this is refused (400)."""

DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
"""An update body's cap unless the project sets another (it is in the task manifest)."""

MAX_LONG_POLL_S = 30.0
"""``wait`` on lease is clamped to ``[0, MAX_LONG_POLL_S]`` seconds."""

CHALLENGE_TTL_S = 300
"""A join challenge is single-use and expires after this many seconds."""

MAX_DISPLAY_NAME_CHARS = 64
MAX_TEAM_CHARS = 64
MAX_INVITE_CHARS = 256
MAX_CHALLENGE_CHARS = 100
MAX_METRICS = 32
"""An update manifest reports at most this many metrics."""
MAX_METRIC_NAME_CHARS = 64
MAX_METRIC_ABS = 1e9
"""A reported metric (a loss, seconds, examples per second) is within ±1e9: larger is not
physical, and a sum of a buffer's reports must never overflow to infinity."""
MAX_CODEC_CHARS = 32
MAX_EXAMPLES = 2**31 - 1
"""No update claims more examples than this (a task caps it far lower)."""
MAX_PROOF_PATH = 64
"""A Merkle inclusion proof has at most this many sibling hashes (a tree of 2**64 leaves)."""
