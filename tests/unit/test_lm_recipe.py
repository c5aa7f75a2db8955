"""The byte-level language-model recipe: corpus, shards, model, training, metrics, sampling."""

from __future__ import annotations

import hashlib
import itertools
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from federated import training
from federated.errors import DataError
from federated.recipes import get_recipe
from federated.recipes.corpus import (
    CORPUS_FILE,
    CORPUS_SHA256,
    builtin_corpus,
    split_tokens,
    unpack,
)
from federated.recipes.lm import ByteLM, shard_bounds
from federated.recipes.sampling import MAX_NEW_BYTES, generate
from federated.recipes.transformer import PRESETS, DecoderLM
from federated.training import load_state_into, train_locally

DATA = Path(resources.files("federated.recipes").joinpath("data"))  # type: ignore[arg-type]
# Small windows and batches: a few seconds of training on one thread.
FAST = {"seq_len": 32, "batch_size": 8, "eval_windows": 32, "num_shards": 10}


def hparams(**overrides: object) -> dict:
    return ByteLM.resolve_hparams({**FAST, **overrides})


@pytest.fixture(scope="module")
def recipe() -> ByteLM:
    recipe = get_recipe("byte-lm")
    assert isinstance(recipe, ByteLM)
    return recipe


# --- the corpus ---------------------------------------------------------------------------


def test_shipped_corpus_matches_its_pinned_digest_and_documentation() -> None:
    blob = (DATA / CORPUS_FILE).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == CORPUS_SHA256
    assert len(blob) <= 10 * 1024**2
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert CORPUS_FILE in readme and CORPUS_SHA256 in readme
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in (DATA / "PYTHON-LICENSE.txt").read_text()
    corpus = builtin_corpus()
    assert corpus.meta["python"] in readme
    assert len(corpus.files) > 100 and len(corpus.content) > 5_000_000


def test_a_corrupted_corpus_is_refused_with_a_clear_error() -> None:
    blob = bytearray((DATA / CORPUS_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(DataError, match=r"SHA-256 is [0-9a-f]{64}, expected .*reinstall"):
        unpack(bytes(blob), source=CORPUS_FILE, expected_sha256=CORPUS_SHA256)
    with pytest.raises(DataError, match="not a readable corpus file"):
        unpack(b"not zstandard at all", source="junk")


def test_validation_files_are_never_training_files() -> None:
    corpus = builtin_corpus()
    train = {f.path for f in corpus.files if f.split == "train"}
    validation = {f.path for f in corpus.files if f.split == "validation"}
    assert validation and train and not train & validation
    assert 0.02 < len(split_tokens("validation")) / len(corpus.content) < 0.10
    assert len(split_tokens("train")) + len(split_tokens("validation")) == len(corpus.content)


# --- shards and the validation set ----------------------------------------------------------


def test_shards_are_deterministic_contiguous_and_disjoint(recipe: ByteLM) -> None:
    tokens = split_tokens("train")
    bounds = [shard_bounds(len(tokens), 7, i) for i in range(7)]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(tokens)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    hp = hparams(num_shards=7, seed=3)
    shard = recipe.load_shard(hp, 2)
    assert torch.equal(shard.features, recipe.load_shard(hparams(num_shards=7, seed=9), 2).features)
    start, _ = bounds[2]
    assert shard.features.dtype == torch.int64 and shard.features.shape[1] == 32
    assert shard.features[0].tolist() == tokens[start : start + 32].tolist()
    assert torch.equal(shard.labels[:, :-1], shard.features[:, 1:])  # labels: the next bytes
    assert shard.labels[0, -1] == tokens[start + 32]
    with pytest.raises(ValueError, match="outside"):
        recipe.load_shard(hp, 7)
    with pytest.raises(DataError, match="use fewer shards or a shorter seq_len"):
        recipe.load_shard(hparams(num_shards=100_000, seq_len=512), 0)


def test_validation_windows_come_from_validation_files_whatever_the_seed(recipe: ByteLM) -> None:
    test = recipe.load_test(hparams(seed=1, num_shards=3))
    again = recipe.load_test(hparams(seed=5, num_shards=50))
    assert len(test) == 32 and torch.equal(test.features, again.features)
    validation = bytes(split_tokens("validation"))
    for window in test.features[::8]:
        assert bytes(window.tolist()) in validation


# --- the model ------------------------------------------------------------------------------


def test_the_model_is_causal() -> None:
    torch.manual_seed(0)
    model = DecoderLM(PRESETS["tiny"]).eval()
    tokens = torch.randint(0, 256, (2, 48))
    changed = tokens.clone()
    changed[:, 30] = (changed[:, 30] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert a.shape == (2, 48, 256)
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 30:], b[:, 30:])


def test_initial_model_is_deterministic_per_seed(recipe: ByteLM) -> None:
    a, b = recipe.initial_state(hparams(seed=4)), recipe.initial_state(hparams(seed=4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = recipe.initial_state(hparams(seed=5))
    assert all(not torch.equal(a[k], other[k]) for k in a if not k.endswith("norm.weight"))


def test_tensor_spec_is_stable_and_independent_of_the_context(recipe: ByteLM) -> None:
    spec = dict(recipe.tensor_spec(hparams()))
    assert spec == dict(recipe.tensor_spec(hparams(seq_len=1024)))
    assert spec["embed.weight"] == ((256, 128), torch.float32)
    assert spec["blocks.3.attn.qkv.weight"] == ((384, 128), torch.float32)
    assert spec["blocks.0.mlp.down.weight"] == ((128, 512), torch.float32)
    assert len(spec) == 4 * 7 + 2  # 7 tensors a block, the embedding and the final norm
    text = "\n".join(f"{k} {list(s)} {d}" for k, (s, d) in sorted(spec.items()))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "b47fbf04247f7200"


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [("tiny", 0.8e6, 1.5e6), ("small", 8e6, 15e6), ("medium", 20e6, 40e6), ("base", 100e6, 130e6)],
)
def test_preset_sizes_are_in_their_documented_ranges(preset: str, low: float, high: float) -> None:
    config = PRESETS[preset]
    assert low <= config.param_count() <= high
    if preset in ("tiny", "small"):  # the formula is the model (base is only counted)
        assert config.param_count() == sum(p.numel() for p in DecoderLM(config).parameters())
    flops = ByteLM().flops_per_example(hparams(preset=preset, seq_len=128))
    assert 6 * config.param_count() * 128 < flops < 8 * config.param_count() * 128


# --- training and metrics ---------------------------------------------------------------------


def test_tiny_model_learns_and_evaluates(recipe: ByteLM) -> None:
    hp = hparams(max_steps=25)
    state, data, test = recipe.initial_state(hp), recipe.load_shard(hp, 0), recipe.load_test(hp)
    result = train_locally(recipe, hp, state, data, seed=1)
    assert result.loss_after < result.loss_before - 0.5
    assert result.steps == 25
    again = train_locally(recipe, hp, state, data, seed=1)
    assert all(torch.equal(result.delta[k], again.delta[k]) for k in result.delta)
    model = recipe.build_model(hp)
    load_state_into(model, training.apply_delta(state, result.delta))
    metrics = recipe.evaluate(model, test)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] < math.log(256)
    assert metrics["bpb"] == pytest.approx(metrics["loss"] / math.log(2))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["examples"] == 32 and metrics["tokens"] == 32 * 32


def test_local_loss_sample_in_batches_equals_one_pass(
    recipe: ByteLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = hparams()
    model = recipe.build_model(hp)
    load_state_into(model, recipe.initial_state(hp))
    data = recipe.load_shard(hp, 1)
    monkeypatch.setattr(ByteLM, "local_eval_size", lambda self, hp: (20, 20))
    whole = training._sample_loss(recipe, hp, model, data.features, data.labels, 3)
    monkeypatch.setattr(ByteLM, "local_eval_size", lambda self, hp: (20, 6))
    batched = training._sample_loss(recipe, hp, model, data.features, data.labels, 3)
    assert batched == pytest.approx(whole, rel=1e-5)


# --- sampling ---------------------------------------------------------------------------------


def test_generate_is_deterministic_and_bounded() -> None:
    torch.manual_seed(0)
    model = DecoderLM(PRESETS["tiny"])
    a = generate(model, b"def ", 24, temperature=1.0, top_k=20, seed=7)
    assert len(a) == 24 and a == generate(model, b"def ", 24, temperature=1.0, top_k=20, seed=7)
    assert a != generate(model, b"def ", 24, temperature=1.0, top_k=20, seed=8)
    greedy = generate(model, b"", 8, temperature=0.0, seed=1)
    assert greedy == generate(model, b"", 8, temperature=0.0, seed=2)
    assert generate(model, b"x" * 5000, 0, seed=0) == b""
    assert model.training  # the caller's mode is restored
    for bad in (
        {"max_new": MAX_NEW_BYTES + 1},
        {"max_new": 1, "temperature": -1.0},
        {"max_new": 1, "top_k": 300},
    ):
        with pytest.raises(ValueError):
            generate(model, b"a", **bad)


def test_corpus_bytes_decode_as_python_source() -> None:
    text = bytes(split_tokens("train")[:2000]).decode("utf-8")
    assert "import" in text or "def " in text
    assert np.asarray(split_tokens("train")).max() < 256


def test_the_local_loss_is_measured_on_a_small_share_of_the_task() -> None:
    """Before and after each task: at most 1/50 of the windows it trains on (at least 8),
    never more than 128, so the two passes stay a small part of the task (bench/lm.py
    measured a fixed 128 windows at 17 % of a 128-step task at batch 4)."""
    lm = get_recipe("byte-lm")
    assert lm.local_eval_size(lm.resolve_hparams({}))[0] == 64  # 200 steps x 16
    assert lm.local_eval_size(lm.resolve_hparams({"max_steps": 128, "batch_size": 4}))[0] == 10
    assert lm.local_eval_size(lm.resolve_hparams({"max_steps": 5, "batch_size": 4}))[0] == 8
    assert lm.local_eval_size(lm.resolve_hparams({"max_steps": 10_000}))[0] == 128
    assert lm.local_eval_size(lm.resolve_hparams({"max_steps": 0, "local_epochs": 1.0}))[0] == 128
