"""Size and time limits both programs rely on; each is named once here."""

from __future__ import annotations

MAX_JSON_BODY_BYTES = 64 * 1024
"""A JSON request body larger than this is refused (413) before it is parsed."""

MAX_JSON_DEPTH = 32
"""A JSON body or signed manifest whose arrays and objects nest deeper than this is refused
(400 ``bad_json``) before it is parsed; no message of the protocol nests deeper than 3."""

MAX_JSON_INT_DIGITS = 32
"""A JSON integer of more digits than this is refused (400 ``bad_json``) while it is
parsed: no field takes one (``MAX_EXAMPLES`` has 10 digits), and up to this length the
field's own range check names the field."""

MAX_RANGE_HEADER_CHARS = 200
"""A model download's ``Range`` header longer than this is refused (400)."""

MAX_RANGE_DIGITS = 18
"""A byte position in ``Range`` of more digits than this is past the end of any model (416)."""

RESUME_CHUNK_BYTES = 8 * 1024 * 1024
"""A contributor resumes a cut upload in chunks of at most this many bytes (one PUT each),
so a cut loses at most one; a payload no larger is sent whole, in one request."""

MAX_CONTENT_RANGE_CHARS = 100
"""A resumed upload's ``Content-Range`` (``bytes FIRST-LAST/TOTAL``) longer than this is
refused (400 ``bad_content_range``); no position of a payload has more than 19 digits."""

MAX_CONTENT_DIGEST_CHARS = 200
"""A resumed upload's ``Content-Digest`` longer than this is refused (400
``bad_content_digest``); ``sha-256=:<44 base64 characters>:`` is 54."""

UPLOAD_BUSY_RETRY_S = 1
"""``Retry-After`` of 409 ``upload_in_progress``: another request still writes the upload
(a cut one the coordinator has not noticed yet)."""

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
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "loss_before": (0.0, 1e4),
    "loss_after": (0.0, 1e4),
    "seconds": (0.0, 1e7),
    "examples_per_second": (0.0, 1e9),
    "steps": (0.0, 1e9),
    "dp_within_clip": (0.0, 1.0),
    "dp_epsilon": (0.0, 1e6),
}
"""The metrics the contributor app reports, and the values each can physically take: a
cross-entropy is never negative and 1e4 nats is no model anyone trains; a task runs for
less than 116 days. Other names only keep within ``MAX_METRIC_ABS``."""

MAX_METRIC_ABS = 1e9

MAX_ENERGY_JOULES = 1e9
"""An update's reported energy is within [0, this] joules (about 278 kWh: a 10 kW machine
for 28 hours, far more than one task takes); more is not a measurement."""

MAX_DP_EPSILON = 100.0
"""The largest privacy budget a project may promise: past it the guarantee means nothing."""
MAX_DP_DELTA = 1e-3
"""delta is the chance the guarantee fails outright: it must stay far below 1 / records."""
MAX_DP_NOISE_MULTIPLIER = 1000.0
MAX_DP_CLIP_NORM = 1e6


def reportable_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` without the values the coordinator would refuse (not finite, or outside
    their range): a contributor whose training diverged still sends its update, and the
    coordinator judges it by its own measurements, not by what it reports."""
    kept: dict[str, float] = {}
    for name, value in metrics.items():
        low, high = METRIC_RANGES.get(name, (-MAX_METRIC_ABS, MAX_METRIC_ABS))
        if low <= value <= high:  # False for NaN
            kept[name] = value
    return kept


"""A reported metric (a loss, seconds, examples per second) is within ±1e9: larger is not
physical, and a sum of a buffer's reports must never overflow to infinity."""
MAX_CODEC_CHARS = 32
MAX_EXAMPLES = 2**31 - 1
"""No update claims more examples than this (a task caps it far lower)."""
MAX_PROOF_PATH = 64
"""A Merkle inclusion proof has at most this many sibling hashes (a tree of 2**64 leaves)."""
