"""DP-FedAvg: user-level differential privacy at the coordinator, with adaptive clipping.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language Models") and
Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping"). Each round:

1. every update's delta is clipped to the current bound ``C`` (global L2) and weighted
   uniformly: weight 1 times its staleness factor (at most 1), never its example count,
   so adding or removing one contributor's update moves the weighted sum by at most ``C``;
2. Gaussian noise ``N(0, (z_delta * C)^2)`` is added to every coordinate of the sum, which
   is then divided by the sum of weights (public: the version's manifest names its
   updates, so there is no need for the paper's fixed expected denominator);
3. the inner strategy gets that noisy mean as its only update: FedAvg applies it with its
   ``server_lr``, FedAdam and DiLoCo take it as their pseudo-gradient. Post-processing,
   so the inner strategy costs no privacy;
4. with ``clip_quantile`` > 0, ``C`` follows the geometric update of Andrew et al.:
   ``C <- C * exp(-clip_lr * (b - clip_quantile))`` where ``b`` is the noisy share of the
   round's updates that were within ``C``. The bits are centred (``b_i - 1/2``) before
   the noise ``N(0, count_stddev^2)`` is added, which halves their sensitivity; that is
   what makes ``z_delta = (z**-2 - (2 * count_stddev)**-2) ** -0.5`` keep the round at
   the cost of one Gaussian mechanism of multiplier ``z``.

Left alone: floating-point attacks on the Gaussian sampler (Mironov 2012, "On Significance
of the Least Significant Bits for Differential Privacy"); a discrete or snapping
mechanism would close them. The noise comes from torch's Mersenne Twister seeded from
``secrets``, not from a CSPRNG sampler. The guarantee is per update: a contributor with
k updates in one aggregation has k times the sensitivity, which the coordinator's
per-contributor share limits must bound.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch

from federated.privacy.clipping import check_clip_norm, counts_as_within, update_norm
from federated.privacy.user_level import update_noise_multiplier
from federated.screening import clip_delta
from federated.strategies import _checks
from federated.strategies.aggregate import check_base, weighted_delta_sum
from federated.strategies.base import Strategy
from federated.tensors import ClientUpdate, StateDict

DEFAULT_CLIP_LR = 0.2
"""Andrew et al.'s geometric learning rate for the bound: at most a factor
``exp(0.2 / 2)``, about 1.1, per round at quantile 0.5."""

INNER_PREFIX = "inner/"
CLIP_NORM_KEY = "dp/clip_norm"


class DPFedAvg(Strategy):
    """Wraps a streaming ``inner`` strategy with the Gaussian mechanism (see the module).

    ``noise_multiplier`` is ``z``, the multiplier the accountant charges per round;
    ``update_noise_multiplier`` is what the deltas get once adaptive clipping's bits have
    taken their share (``z`` itself with fixed clipping). ``count_stddev`` is required
    with adaptive clipping (``clip_quantile`` > 0): the strategy does not know how many
    updates a round will have, and expected / 20 is the usual choice
    (``federated.privacy.user_level.default_count_stddev``). ``seed`` fixes the noise for
    tests and benches; without it every instance draws a fresh seed from ``secrets``.

    State: the inner strategy's tensors under ``inner/`` and the bound the next round
    uses as ``dp/clip_norm`` (float64), so a restarted coordinator keeps the adapted bound.
    A round that raises changes neither.
    """

    name: ClassVar[str] = "dp-fedavg"
    streaming: ClassVar[bool] = True

    def __init__(
        self,
        inner: Strategy,
        *,
        clip_norm: float,
        noise_multiplier: float,
        clip_quantile: float = 0.0,
        clip_lr: float = DEFAULT_CLIP_LR,
        count_stddev: float | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(inner, Strategy):
            raise ValueError(f"DPFedAvg wraps a Strategy, got {type(inner).__name__}")
        if not inner.streaming:
            raise ValueError(
                f"DP-FedAvg cannot wrap {inner.name!r}: it picks single updates (a median, "
                f"Krum's choice), so one contributor can move its result by more than the "
                f"clip bound and the noise no longer covers it; use a streaming strategy "
                f"(fedavg, fedadam, diloco, ...)"
            )
        self.inner = inner
        self.initial_clip_norm = check_clip_norm(clip_norm)
        self.noise_multiplier = _checks.number("noise_multiplier", noise_multiplier, low=0.0)
        self.clip_quantile = _checks.number(
            "clip_quantile", clip_quantile, low=0.0, high=1.0, high_open=True
        )
        self.clip_lr = _checks.number("clip_lr", clip_lr, low=0.0, low_open=True)
        self.count_stddev: float | None = None
        if self.adaptive:
            if count_stddev is None:
                raise ValueError(
                    "adaptive clipping (clip_quantile > 0) needs count_stddev, the noise on "
                    "the count of unclipped updates; pass the expected updates per round / 20"
                )
            self.count_stddev = _checks.number("count_stddev", count_stddev, low=0.0, low_open=True)
        elif count_stddev is not None:
            raise ValueError("count_stddev is for adaptive clipping; set clip_quantile > 0")
        self.update_noise_multiplier = update_noise_multiplier(
            self.noise_multiplier, self.count_stddev
        )
        self._clip_norm = self.initial_clip_norm
        self._generator = torch.Generator()
        self._generator.manual_seed(secrets.randbits(63) if seed is None else int(seed))

    @property
    def adaptive(self) -> bool:
        """Whether the bound follows a quantile of the update norms."""
        return self.clip_quantile > 0.0

    @property
    def clip_norm(self) -> float:
        """The bound the next round clips to (and contributors should clip to)."""
        return self._clip_norm

    def aggregate(self, base: StateDict, updates: Iterable[ClientUpdate]) -> StateDict:
        check_base(base)
        bound = self._clip_norm
        bits: list[bool] = []
        total, weight, _ = weighted_delta_sum(base, self._clipped(updates, bound, bits))
        sigma = self.update_noise_multiplier * bound
        if sigma > 0:
            for t in total.values():
                t.add_(torch.randn(t.shape, generator=self._generator, dtype=t.dtype), alpha=sigma)
        for t in total.values():
            t.mul_(1.0 / weight)
        next_bound = self._next_bound(bound, bits) if self.adaptive else bound
        result = self.inner.aggregate(base, [ClientUpdate(total, num_examples=1)])
        self._clip_norm = next_bound
        return result

    def _clipped(
        self, updates: Iterable[ClientUpdate], bound: float, bits: list[bool]
    ) -> Iterator[ClientUpdate]:
        """Each update clipped to ``bound`` at weight = its staleness factor; the clipping
        bit of every update that counts goes to ``bits``."""
        for index, update in enumerate(updates):
            factor = update.staleness_factor
            if not (isinstance(factor, int | float) and 0.0 <= factor <= 1.0):
                raise ValueError(
                    f"update {index} has staleness factor {factor!r}; DP-FedAvg needs one in "
                    f"[0, 1], or one update could count for more than the clip bound"
                )
            norm = update_norm(update.delta)
            if not math.isfinite(norm):
                raise ValueError(f"update {index} has non-finite values; it cannot be clipped")
            if factor > 0:
                bits.append(counts_as_within(update.within_clip, norm, bound))
            yield ClientUpdate(
                clip_delta(update.delta, norm, bound),
                num_examples=1,
                staleness_factor=float(factor),
                client_id=update.client_id,
            )
            del update

    def _next_bound(self, bound: float, bits: list[bool]) -> float:
        """The geometric update from the noisy share of unclipped updates."""
        assert self.count_stddev is not None
        centred = sum(bits) - len(bits) / 2.0
        noise = float(torch.randn((), generator=self._generator, dtype=torch.float64))
        share = (centred + self.count_stddev * noise) / len(bits) + 0.5
        return bound * math.exp(-self.clip_lr * (share - self.clip_quantile))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"{INNER_PREFIX}{k}": t for k, t in self.inner.state_tensors().items()}
        tensors[CLIP_NORM_KEY] = torch.tensor(self._clip_norm, dtype=torch.float64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors()`` saved; an empty dict is a fresh start. Raises
        ValueError, keeping the current state, if the tensors are not such a state. With
        fixed clipping the configured bound stays (a saved one is checked, not used)."""
        if not tensors:
            self.inner.load_state_tensors({})
            self._clip_norm = self.initial_clip_norm
            return
        unknown = [k for k in tensors if k != CLIP_NORM_KEY and not k.startswith(INNER_PREFIX)]
        if unknown or CLIP_NORM_KEY not in tensors:
            raise ValueError(
                f"not a {self.name} state: unknown tensors {sorted(unknown)[:3]}"
                + ("" if CLIP_NORM_KEY in tensors else f", missing {CLIP_NORM_KEY!r}")
            )
        saved = tensors[CLIP_NORM_KEY]
        value = float(saved.reshape(-1)[0]) if saved.numel() == 1 else math.nan
        if not saved.dtype.is_floating_point or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{self.name} state: {CLIP_NORM_KEY!r} must be one finite float > 0; "
                f"load the state saved for this project"
            )
        prefix = len(INNER_PREFIX)
        self.inner.load_state_tensors(
            {k[prefix:]: t for k, t in tensors.items() if k.startswith(INNER_PREFIX)}
        )
        self._clip_norm = value if self.adaptive else self.initial_clip_norm

    def client_hparams(self) -> dict[str, Any]:
        return self.inner.client_hparams()

    def check_round_size(self, updates: int) -> None:
        self.inner.check_round_size(updates)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mechanism": "gaussian",
            "level": "user",
            "inner": self.inner.describe(),
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
            "clip_norm": self.initial_clip_norm,
            "clip_quantile": self.clip_quantile,
            "clip_lr": self.clip_lr,
            "count_stddev": self.count_stddev,
        }
