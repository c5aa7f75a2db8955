"""LEAF's synthetic(α, β) federated benchmark (Li et al., FedProx paper): seeded, non-IID.

Each shard is one simulated device with its own model (α: how much device models differ)
and its own feature distribution (β: how much device inputs differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from federated.recipes.base import Dataset, HParamValue, HyperParam, Recipe

_HELD_OUT_FRACTION = 0.2


@lru_cache(maxsize=8)
def _device_data(
    alpha: float, beta: float, dim: int, classes: int, num_devices: int, seed: int, device: int
) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one device, generated from (seed, device) alone."""
    rng = np.random.default_rng([seed, device, 0x1EAF])
    n = int(min(max(rng.lognormal(4.0, 0.5), 40), 400))
    u = rng.normal(0.0, np.sqrt(alpha))
    big_b = rng.normal(0.0, np.sqrt(beta))
    w = rng.normal(u, 1.0, size=(classes, dim))
    b = rng.normal(u, 1.0, size=classes)
    v = rng.normal(big_b, 1.0, size=dim)
    sigma = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2)
    x = rng.normal(v, np.sqrt(sigma), size=(n, dim))
    y = np.argmax(x @ w.T + b, axis=1)
    return x.astype(np.float32), y.astype(np.int64)


class SyntheticLogReg(Recipe):
    name = "synthetic-logreg"
    description = (
        "LEAF synthetic(α, β): non-IID multinomial logistic regression, one device per shard"
    )
    extra_hparams: ClassVar[tuple[HyperParam, ...]] = (
        HyperParam("alpha", float, 1.0, "how much device models differ", low=0.0, high=100.0),
        HyperParam("beta", float, 1.0, "how much device inputs differ", low=0.0, high=100.0),
        HyperParam("dim", int, 60, "feature dimension", low=2, high=10_000),
        HyperParam("classes", int, 10, "number of classes", low=2, high=1000),
    )

    def _split(self, hparams: Mapping[str, HParamValue], device: int) -> tuple[Dataset, Dataset]:
        x, y = _device_data(
            float(hparams["alpha"]),
            float(hparams["beta"]),
            int(hparams["dim"]),
            int(hparams["classes"]),
            int(hparams["num_shards"]),
            int(hparams["seed"]),
            device,
        )
        n_test = max(1, int(len(y) * _HELD_OUT_FRACTION))
        train = Dataset(torch.from_numpy(x[n_test:]), torch.from_numpy(y[n_test:]))
        test = Dataset(torch.from_numpy(x[:n_test]), torch.from_numpy(y[:n_test]))
        return train, test

    def build_model(self, hparams: Mapping[str, HParamValue]) -> nn.Module:
        return nn.Sequential(nn.Linear(int(hparams["dim"]), int(hparams["classes"])))

    def load_shard(
        self, hparams: Mapping[str, HParamValue], shard_index: int, *, data_path: str | None = None
    ) -> Dataset:
        if not 0 <= shard_index < int(hparams["num_shards"]):
            raise ValueError(f"shard index {shard_index} is outside [0, {hparams['num_shards']})")
        return self._split(hparams, shard_index)[0]

    def load_test(self, hparams: Mapping[str, HParamValue]) -> Dataset:
        parts = [self._split(hparams, d)[1] for d in range(int(hparams["num_shards"]))]
        return Dataset(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]))

    def flops_per_example(self, hparams: Mapping[str, HParamValue]) -> float:
        return 3.0 * 2.0 * int(hparams["dim"]) * int(hparams["classes"])
