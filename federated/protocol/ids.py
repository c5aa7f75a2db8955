"""Identifier formats: project names, server-made ids, digests, keys and signatures.

Each pattern is written once, in the form JSON Schema (ECMA-262) reads. Python's ``$`` also
matches before a trailing newline, so checks here use ``fullmatch`` on the pattern's body,
and the message types use the ``\\Z`` form (see ``python_pattern``).
"""

from __future__ import annotations

import hashlib
import re

PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
DIGEST_PATTERN = r"^[0-9a-f]{64}$"
B64_32_PATTERN = r"^[A-Za-z0-9+/]{43}=$"  # 32 raw bytes, standard base64, padded
B64_64_PATTERN = r"^[A-Za-z0-9+/]{86}==$"  # 64 raw bytes (an Ed25519 signature)
ERROR_CODE_PATTERN = r"^[a-z][a-z0-9_]*$"


def python_pattern(pattern: str) -> str:
    """``^…$`` as Python must write it to refuse a trailing newline: ``^…\\Z``."""
    assert pattern.startswith("^") and pattern.endswith("$")
    return pattern[:-1] + r"\Z"


_PROJECT_NAME = re.compile(python_pattern(PROJECT_NAME_PATTERN))
_SERVER_ID = re.compile(python_pattern(ID_PATTERN))
_DIGEST = re.compile(python_pattern(DIGEST_PATTERN))


def is_project_name(value: object) -> bool:
    return isinstance(value, str) and _PROJECT_NAME.match(value) is not None


def is_server_id(value: object) -> bool:
    return isinstance(value, str) and _SERVER_ID.match(value) is not None


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


def task_seed(task_id: str) -> int:
    """The batch-order seed a task is trained with. Part of the contract: every contributor
    trains a task with it, so the coordinator can train it again and compare
    (``federated.replication``)."""
    return int(hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:8], 16) % (2**31)
