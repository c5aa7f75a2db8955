"""In-process federated simulation: every client trains in this process, nothing on the network.

    python -m federated.simulate --recipe digits-mlp --clients 10 --rounds 30 \
        --partition dirichlet:0.3 --strategy fedavg --codec int8 [--attackers 2 --attack scale:-10] [--json]

Differential privacy (record-level DP-SGD, user-level DP-FedAvg) and the vectorised fast
path for many clients are options of ``simulate`` (``federated.simulate_privacy``).

It runs the same code paths as the real system (recipes, local training, the update codec
with validation, the strategies), so it is both a research tool and the core's end-to-end test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from federated.codec import ErrorFeedback, decode_update, encode_model, encode_update
from federated.errors import FederatedError
from federated.privacy.clipping import clip_update
from federated.recipes import RECIPES, get_recipe
from federated.screening import defend_round
from federated.simulate_privacy import ClientTraining, RecordLevelDP, UserLevelDP, user_summary
from federated.strategies import STRATEGIES, DPFedAvg, Strategy, build_strategy
from federated.tensors import ClientUpdate, StateDict
from federated.training import load_state_into, schedule_offset, total_steps_for


@dataclass(frozen=True)
class Attack:
    """What a malicious client does to its honest delta before sending it."""

    kind: str  # "scale" (multiply; negative = scaled sign flip) or "noise" (Gaussian, std)
    value: float

    def apply(self, delta: StateDict, generator: torch.Generator) -> StateDict:
        if self.kind == "scale":
            return {k: v * self.value for k, v in delta.items()}
        return {k: torch.randn(v.shape, generator=generator) * self.value for k, v in delta.items()}


def parse_attack(text: str) -> Attack:
    kind, _, raw = text.partition(":")
    if kind not in {"scale", "noise"} or not raw:
        raise argparse.ArgumentTypeError(f"attack {text!r}: use scale:FACTOR or noise:STD")
    try:
        return Attack(kind, float(raw))
    except ValueError:
        raise argparse.ArgumentTypeError(f"attack {text!r}: {raw!r} is not a number") from None


@dataclass
class RoundResult:
    round: int
    accuracy: float
    loss: float
    clients: int
    bytes_up: int
    bytes_down: int
    seconds: float


@dataclass
class SimulationResult:
    config: dict[str, Any]
    rounds: list[RoundResult] = field(default_factory=list)
    privacy: dict[str, Any] | None = None
    """The privacy spent (``privacy=`` runs only): level, noise, delta, epsilon."""

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else float("nan")

    def summary(self) -> dict[str, Any]:
        extra = {} if self.privacy is None else {"privacy": self.privacy}
        return {
            "config": self.config,
            "final_accuracy": self.final_accuracy,
            "best_accuracy": max((r.accuracy for r in self.rounds), default=float("nan")),
            "final_loss": self.rounds[-1].loss if self.rounds else float("nan"),
            "bytes_up": sum(r.bytes_up for r in self.rounds),
            "bytes_down": sum(r.bytes_down for r in self.rounds),
            "seconds": sum(r.seconds for r in self.rounds),
            "rounds": [asdict(r) for r in self.rounds],
            **extra,
        }


def simulate(
    *,
    recipe: str = "digits-mlp",
    clients: int = 10,
    rounds: int = 30,
    partition: str = "dirichlet:0.3",
    strategy: str = "fedavg",
    strategy_params: dict[str, Any] | None = None,
    codec: str = "f32",
    fraction: float = 1.0,
    attackers: int = 0,
    attack: Attack | None = None,
    seed: int = 0,
    hparams: dict[str, Any] | None = None,
    on_round: Any = None,
    defend: bool = False,
    privacy: RecordLevelDP | UserLevelDP | None = None,
    fast: bool = False,
) -> SimulationResult:
    """Run ``rounds`` rounds and return per-round accuracy, loss and traffic.

    ``defend``: each round's updates pass the coordinator's norm defences first
    (``federated.screening.defend_round``: outliers out, the rest clipped to the median).
    ``privacy``: DP-SGD on every client, or DP-FedAvg around ``strategy`` with every
    client clipping to the server's bound; ``fast``: the round's clients trained together,
    vectorised (see ``federated.simulate_privacy``)."""
    if clients < 1 or rounds < 0 or not 0 < fraction <= 1:
        raise ValueError("need clients >= 1, rounds >= 0 and 0 < fraction <= 1")
    if not 0 <= attackers <= clients:
        raise ValueError(f"attackers must be between 0 and {clients}")
    if attackers and attack is None:
        attack = Attack("scale", -10.0)
    user_level = isinstance(privacy, UserLevelDP)
    if user_level and defend:
        raise ValueError(
            "defend and user-level DP do not combine: keeping updates out by their norm "
            "depends on their content, which the accounting does not cover (DP's own "
            "clipping bounds every update)"
        )
    the_recipe = get_recipe(recipe)
    if the_recipe.data_mode != "builtin":
        raise ValueError(
            f"recipe {recipe!r} trains on participants' own files; simulate a built-in one"
        )
    per_round = max(1, round(fraction * clients))
    server_strategy: Strategy = build_strategy(strategy, strategy_params)
    if isinstance(privacy, UserLevelDP):
        server_strategy = privacy.wrap(server_strategy, per_round=per_round, seed=seed)
    hp = the_recipe.resolve_hparams(
        {
            **(hparams or {}),
            **server_strategy.client_hparams(),  # FedProx's μ, as the coordinator sends it
            "partition": partition,
            "num_shards": clients,
            "seed": seed,
        }
    )
    spec = the_recipe.tensor_spec(hp)
    shards = [the_recipe.load_shard(hp, i) for i in range(clients)]
    test = the_recipe.load_test(hp)
    assert test is not None
    model = the_recipe.build_model(hp)
    global_state = the_recipe.initial_state(hp)
    feedback = {i: ErrorFeedback() for i in range(clients)}
    attacker_ids = set(range(clients - attackers, clients))
    rng = np.random.default_rng(seed)
    training = ClientTraining(
        the_recipe,
        shards,
        record=privacy if isinstance(privacy, RecordLevelDP) else None,
        fast=fast,
    )
    clip_norms: list[float] = []
    result = SimulationResult(
        config={
            "recipe": recipe,
            "clients": clients,
            "rounds": rounds,
            "partition": partition,
            "strategy": server_strategy.describe(),
            "hparams": dict(hp),
            "codec": codec,
            "fraction": fraction,
            "attackers": attackers,
            "attack": f"{attack.kind}:{attack.value:g}" if attack and attackers else None,
            "seed": seed,
            "defend": defend,
        }
    )
    if privacy is not None:
        result.config["privacy"] = {"kind": type(privacy).__name__, **asdict(privacy)}
    if fast:
        result.config["fast"] = True
    model_bytes = len(encode_model(global_state))
    skip_codec = fast and codec == "f32"  # lossless: the round trip changes nothing
    f32_bytes = len(encode_update(global_state, "f32").payload) if skip_codec else 0

    for r in range(1, rounds + 1):
        started = time.perf_counter()
        chosen = sorted(rng.choice(clients, size=per_round, replace=False).tolist())
        traffic = {"up": 0}
        seeds = [seed * 100_003 + r * 1009 + client for client in chosen]
        training.begin_round(hp, global_state, chosen, seeds)
        bound = server_strategy.clip_norm if isinstance(server_strategy, DPFedAvg) else 0.0

        def updates(
            base: StateDict,
            chosen: list[int],
            r: int,
            seeds: list[int],
            bound: float,
            traffic: dict[str, int],
        ) -> Iterator[ClientUpdate]:
            for client, task_seed in zip(chosen, seeds, strict=True):
                # Round r trains on version r - 1: its place on a schedule across versions,
                # as the coordinator gives it (``schedule_offset``).
                task_steps = total_steps_for(hp, len(shards[client]))
                offset = schedule_offset(hp, r - 1, task_steps)
                task_hp = hp if offset is None else {**hp, "schedule_offset": offset}
                delta, examples = training.train(client, task_hp, base, task_seed)
                if client in attacker_ids and attack is not None:
                    delta = attack.apply(delta, torch.Generator().manual_seed(r * 7919 + client))
                within = None
                if user_level:  # the contributor clips to the bound its task names
                    delta, within = clip_update(delta, bound)
                if skip_codec:
                    traffic["up"] += f32_bytes
                    decoded = delta
                else:
                    encoded = encode_update(delta, codec, feedback=feedback[client])
                    traffic["up"] += len(encoded.payload)
                    decoded = decode_update(encoded.payload, spec, expected_codec=codec)
                yield ClientUpdate(
                    decoded,
                    examples,
                    max_examples=len(shards[client]),
                    client_id=str(client),
                    within_clip=within,
                )

        round_updates: Iterable[ClientUpdate] = updates(
            global_state, chosen, r, seeds, bound, traffic
        )
        if defend:
            round_updates = defend_round(list(round_updates))
        global_state = server_strategy.aggregate(global_state, round_updates)
        clip_norms.append(bound)
        load_state_into(model, global_state)
        metrics = the_recipe.evaluate(model, test)
        row = RoundResult(
            round=r,
            accuracy=metrics["accuracy"],
            loss=metrics["loss"],
            clients=len(chosen),
            bytes_up=traffic["up"],
            bytes_down=model_bytes * len(chosen),
            seconds=time.perf_counter() - started,
        )
        result.rounds.append(row)
        if on_round is not None:
            on_round(row)
    if isinstance(privacy, RecordLevelDP):
        result.privacy = training.record_summary()
    elif isinstance(privacy, UserLevelDP) and isinstance(server_strategy, DPFedAvg):
        result.privacy = user_summary(privacy, server_strategy, training, clip_norms)
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federated.simulate",
        description="Simulate federated training in one process (no network).",
    )
    parser.add_argument("--recipe", default="digits-mlp", choices=sorted(RECIPES))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of clients per round")
    parser.add_argument(
        "--partition", default="dirichlet:0.3", help="iid, shard or dirichlet:ALPHA"
    )
    parser.add_argument("--strategy", default="fedavg", choices=sorted(STRATEGIES))
    parser.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter, e.g. beta=0.2 for trimmed-mean (repeatable)",
    )
    parser.add_argument(
        "--codec", default="f32", help="f32, f16, int8, int8-block or topk:FRACTION"
    )
    parser.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe hyperparameter (repeatable)",
    )
    parser.add_argument("--attackers", type=int, default=0, help="how many clients attack")
    parser.add_argument(
        "--attack",
        type=parse_attack,
        default=None,
        help="scale:FACTOR or noise:STD (default scale:-10)",
    )
    parser.add_argument(
        "--defend",
        action="store_true",
        help="apply the coordinator's norm defences to each round (outliers out, clip to median)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: small models train fastest single-threaded)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object at the end instead of a table"
    )
    return parser


def _key_values(items: Sequence[str], what: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: use KEY=VALUE")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    as_json = bool(args.json)

    def print_row(row: RoundResult) -> None:
        print(
            f"{row.round:>5}  {row.accuracy:>8.4f}  {row.loss:>8.4f}  {row.clients:>7}  "
            f"{row.bytes_up:>10,}  {row.bytes_down:>10,}  {row.seconds:>6.2f}",
            flush=True,
        )

    try:
        if not as_json:
            print(
                f"{'round':>5}  {'accuracy':>8}  {'loss':>8}  {'clients':>7}  {'bytes up':>10}  {'bytes down':>10}  {'sec':>6}"
            )
        result = simulate(
            recipe=args.recipe,
            clients=args.clients,
            rounds=args.rounds,
            partition=args.partition,
            strategy=args.strategy,
            strategy_params=_key_values(args.strategy_param, "--strategy-param"),
            codec=args.codec,
            fraction=args.fraction,
            attackers=args.attackers,
            attack=args.attack,
            seed=args.seed,
            hparams=_key_values(args.hparam, "--hparam"),
            on_round=None if as_json else print_row,
            defend=args.defend,
        )
    except (FederatedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"final accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}) after "
            f"{len(result.rounds)} rounds; {summary['bytes_up']:,} bytes up, {summary['bytes_down']:,} down; "
            f"{summary['seconds']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
