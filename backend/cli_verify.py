"""``barnraise-backend verify``: check a project's chain of versions against the data folder.

    barnraise-backend verify --data DIR --project NAME [--version N]

From version N (default: the current one) back to 0: every manifest verifies under the
project key, each names its parent's model and signed manifest, each version's model and
strategy state are stored with their digests, and the updates under each version's
``updates_root`` are the ones stored, aggregated, signed by their contributors for their
payload digests, with payloads that hash to those digests
(``backend.services.provenance.ProvenanceService.audit``). A payload that retention
deleted (``keep_payload_versions``) is counted as pruned: its digest is checked, not its
bytes. Prints a verdict; exit status 1 with every problem found when the chain does not
hold.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from federated.provenance import manifest_digest

EXIT_FAILED = 1


def add_verify_parser(sub: Any, data: argparse.ArgumentParser) -> None:
    """The ``verify`` subcommand, on the CLI's subparsers (``data`` gives ``--data``)."""
    verify = sub.add_parser(
        "verify",
        parents=[data],
        help="check a project's signed chain of versions against the stored blobs",
    )
    verify.add_argument("--project", required=True, help="the project name")
    verify.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="check from version N back to 0 (default: the current version)",
    )


def run_verify(args: argparse.Namespace, data_dir: Path, out: TextIO) -> int:
    from backend.cli_store import existing_coordinator

    coordinator = existing_coordinator(args, data_dir)
    try:
        project = coordinator.project(args.project)
        service = coordinator.services.provenance
        audit = service.audit(project, args.version)
        top = project.current_version if args.version is None else args.version
        span = f"the chain of {project.name} from version {top} back to 0"
        if not audit.ok:
            print(f"FAILED: {span} does not hold ({len(audit.problems)} problem(s)):", file=out)
            for problem in audit.problems:
                print(f"  - {problem}", file=out)
            return EXIT_FAILED
        head = service.chain(project, top)[0]
        print(f"OK: {span} holds.", file=out)
        print(
            f"  {len(audit.versions)} version(s), {audit.updates} update(s); every manifest is "
            f"signed by key {audit.key_fingerprint}, each names its parent, every model and "
            "strategy state is stored with its digest, and every update's upload manifest is "
            "signed by its contributor for its payload digest.",
            file=out,
        )
        if audit.pruned:
            print(
                f"  {audit.updates - audit.pruned} update payload(s) stored with their digests; "
                f"{audit.pruned} pruned by retention (keep_payload_versions): their digests are "
                "checked, their bytes are gone.",
                file=out,
            )
        else:
            print("  Every update payload is stored with its digest.", file=out)
        print(
            f"  version {top}: model {head.manifest['digest']}, signed manifest sha256 "
            f"{manifest_digest(head.manifest)}",
            file=out,
        )
        return 0
    except Exception as exc:
        from backend.errors import HTTPError

        if isinstance(exc, HTTPError):
            raise ValueError(exc.message) from None
        raise
    finally:
        coordinator.close()
