"""The model cache stays within its limit: least recently used first, never the model in use."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from engine_http_script import Reply, ScriptServer

from app.contributor.cache import MIB, STALE_PART_S, ModelCache
from app.contributor.client import CoordinatorClient, RetryPolicy

KB = 1024


def put(
    cache: ModelCache, name: str, size: int, age_s: float, suffix: str = ".safetensors"
) -> Path:
    cache.models_dir.mkdir(parents=True, exist_ok=True)
    path = cache.models_dir / f"{name}{suffix}"
    path.write_bytes(b"m" * size)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_least_recently_used_models_go_first(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    oldest = put(cache, "a" * 64, 100 * KB, age_s=300)
    older = put(cache, "b" * 64, 100 * KB, age_s=200)
    newest = put(cache, "c" * 64, 100 * KB, age_s=100)
    assert cache.enforce(250 * KB) == [oldest]
    assert cache.enforce(150 * KB) == [older]
    assert newest.exists() and cache.size_bytes() == 100 * KB
    assert cache.enforce(150 * KB) == []  # within the limit: nothing to do


def test_a_model_used_again_is_kept_over_an_unused_newer_one(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    used = put(cache, "a" * 64, 100 * KB, age_s=300)
    unused = put(cache, "b" * 64, 100 * KB, age_s=200)
    cache.touch("a" * 64)
    assert cache.enforce(150 * KB) == [unused]
    assert used.exists()


def test_the_model_in_use_is_never_evicted(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    in_use = put(cache, "a" * 64, 300 * KB, age_s=900)
    other = put(cache, "b" * 64, 100 * KB, age_s=10)
    assert cache.enforce(50 * KB, keep={"a" * 64}) == [other]
    assert in_use.exists()  # over the limit on its own, still kept
    assert [m.digest for m in cache.models()] == ["a" * 64]


def test_stale_partial_downloads_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    stale = put(cache, "a" * 64, 10 * KB, age_s=STALE_PART_S + 60, suffix=".part")
    fresh = put(cache, "b" * 64, 10 * KB, age_s=60, suffix=".part")
    kept = put(cache, "c" * 64, 10 * KB, age_s=STALE_PART_S + 60, suffix=".part")
    assert cache.enforce(1024 * MIB, keep={"c" * 64}) == [stale]
    assert fresh.exists() and kept.exists()


def test_partial_downloads_count_towards_the_limit(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    model = put(cache, "a" * 64, 100 * KB, age_s=100)
    put(cache, "b" * 64, 100 * KB, age_s=10, suffix=".part")
    assert cache.enforce(150 * KB) == [model]


def test_an_empty_or_missing_cache_is_fine(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "nothing-yet")
    assert cache.enforce(0) == [] and cache.size_bytes() == 0 and cache.models() == []
    with pytest.raises(ValueError):
        cache.enforce(-1)


def test_other_files_are_left_alone(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    note = cache.models_dir / "README"
    cache.models_dir.mkdir(parents=True)
    note.write_text("not a model")
    put(cache, "a" * 64, 100 * KB, age_s=100)
    cache.enforce(0)
    assert note.exists()


MODEL = bytes(range(256)) * 400
DIGEST = hashlib.sha256(MODEL).hexdigest()


def test_download_marks_the_model_used(script_server: ScriptServer, tmp_path: Path) -> None:
    script_server.handler = lambda r: Reply(200, MODEL, {"ETag": f'"{DIGEST}"'})
    client = CoordinatorClient(
        script_server.url, "digits", cache_dir=tmp_path, retry=RetryPolicy(attempts=2)
    )
    cache = ModelCache(tmp_path)
    other = put(cache, "f" * 64, len(MODEL), age_s=50)
    path = client.download_model(DIGEST)
    assert path == cache.path(DIGEST)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    assert client.download_model(DIGEST) == path  # from the cache, and marked used now
    assert len(script_server.requests) == 1
    assert path.stat().st_mtime > time.time() - 60
    assert cache.enforce(len(MODEL) + 10) == [other]
