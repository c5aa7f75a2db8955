"""``barnraise-backend sample``: what a language-model project's model writes.

    barnraise-backend sample --data DIR --project P [--prompt TEXT] [--bytes N]
                             [--version V] [--temperature T]

Prints the prompt and its continuation by the current (or the given) version; exit
status 2 when the project writes no text or the version does not exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from backend.services.samples import MAX_CLI_SAMPLE_BYTES


def add_sample_parser(sub: Any, data: argparse.ArgumentParser) -> None:
    sample = sub.add_parser(
        "sample", parents=[data], help="text written by a language-model project's model"
    )
    sample.add_argument("--project", required=True)
    sample.add_argument("--prompt", default="def ", help='what to continue (default "def ")')
    sample.add_argument(
        "--bytes", type=int, default=200, help=f"bytes to write, 1 to {MAX_CLI_SAMPLE_BYTES}"
    )
    sample.add_argument("--version", type=int, default=None, help="default: the current one")
    sample.add_argument("--temperature", type=float, default=0.8, help="0: the likeliest bytes")


def run_sample(args: argparse.Namespace, data_dir: Path, out: TextIO) -> int:
    from backend.cli_store import existing_coordinator
    from backend.errors import HTTPError
    from backend.services.samples import generate_samples

    coordinator = existing_coordinator(args, data_dir)
    try:
        try:
            project = coordinator.project(args.project)
        except HTTPError as exc:
            raise ValueError(exc.message) from None
        (sample,) = generate_samples(
            coordinator.context,
            project,
            (args.prompt,),
            args.bytes,
            version=args.version,
            temperature=args.temperature,
        )
        print(f"{sample.prompt}{sample.text}", file=out)
        return 0
    finally:
        coordinator.close()
