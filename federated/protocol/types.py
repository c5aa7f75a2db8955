"""Constrained value types the messages are built from (each a pattern or range, once)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from federated.protocol import limits
from federated.protocol.ids import (
    B64_32_PATTERN,
    B64_64_PATTERN,
    DIGEST_PATTERN,
    ERROR_CODE_PATTERN,
    ID_PATTERN,
    PROJECT_NAME_PATTERN,
    python_pattern,
)


def _pattern(pattern: str, description: str) -> msgspec.Meta:
    # Python checks the \Z form; federated.protocol.schema writes the ECMA form back.
    return msgspec.Meta(pattern=python_pattern(pattern), description=description)


ProjectName = Annotated[
    str,
    _pattern(PROJECT_NAME_PATTERN, "Lower-case letters, digits and '-'; at most 63."),
]
ServerId = Annotated[str, _pattern(ID_PATTERN, "A server-made id (task, client).")]
Digest = Annotated[str, _pattern(DIGEST_PATTERN, "sha256, lower-case hex.")]
PublicKey = Annotated[
    str,
    _pattern(B64_32_PATTERN, "Raw 32-byte Ed25519 public key, standard base64 with padding."),
]
Signature = Annotated[
    str,
    _pattern(B64_64_PATTERN, "Raw 64-byte Ed25519 signature, standard base64 with padding."),
]
ChallengeText = Annotated[
    str, _pattern(B64_32_PATTERN, "32 random bytes, base64. Single use; expires after 5 minutes.")
]
ErrorCode = Annotated[str, _pattern(ERROR_CODE_PATTERN, "A stable machine-readable code.")]
UnixSeconds = Annotated[int, msgspec.Meta(ge=0, description="Unix seconds.")]
Count = Annotated[int, msgspec.Meta(ge=0)]
Rank = Annotated[int, msgspec.Meta(ge=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Examples = Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_EXAMPLES)]
CodecName = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_CODEC_CHARS)]
MetricValue = Annotated[float, msgspec.Meta(ge=-limits.MAX_METRIC_ABS, le=limits.MAX_METRIC_ABS)]
MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_METRIC_NAME_CHARS)]
HParamValue = int | float | str | bool
HParams = Annotated[
    dict[str, HParamValue],
    msgspec.Meta(
        description="Resolved hyperparameters: name -> integer, number, string or boolean."
    ),
]
