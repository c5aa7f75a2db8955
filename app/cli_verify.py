"""`barnraise verify`: prove, from a receipt, that your update is in a signed model version.

    barnraise verify --server URL --project NAME --receipt FILE_OR_JSON [--version N]

Downloads the signed manifest of every version from the current one back to 0 and the
inclusion proof of the receipt's update, then checks everything here
(``federated.provenance``): each manifest is signed by the project key, the versions are
consecutive and each names its parent's model and signed manifest, and the update (its id
and payload digest, as the receipt says) is one of the leaves under the signed
``updates_root`` of version N, by default the version it was aggregated into. The key is
the one this computer pinned when it joined the project; without one it is the key the
server gives now, and the verdict says so. Exit status 1 on any failure, saying what failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from app.cli_common import EXIT_FAILED, _store

if TYPE_CHECKING:
    import requests

    from app.contributor.client import CoordinatorClient
    from federated import protocol
    from federated.provenance import SignedManifest

MAX_RECEIPT_BYTES = 64 * 1024

__all__ = ["add_verify_parser", "cmd_verify"]


def add_verify_parser(sub: Any, common: Callable[..., None]) -> None:
    """The ``verify`` subcommand on the CLI's subparsers (``common`` adds the shared options)."""
    verify = sub.add_parser(
        "verify", help="prove from a receipt that your update is in a signed model version"
    )
    verify.add_argument("--server", required=True, help="the coordinator, https://HOST")
    verify.add_argument("--project", required=True, help="the project name")
    verify.add_argument(
        "--receipt",
        required=True,
        metavar="FILE_OR_JSON",
        help="the upload receipt: a JSON file, the JSON itself, or just the update id",
    )
    verify.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="the version to prove it is in (default: the one it was aggregated into)",
    )
    common(verify, defaults=False)


class VerifyFailed(Exception):
    """The chain or the proof does not hold; the message lists what failed."""


def read_receipt(text: str) -> tuple[str, str | None]:
    """(update id, payload digest or None) from a receipt file, its JSON, or a bare id."""
    from federated import protocol

    raw = text.strip()
    if not raw.startswith("{"):
        path = Path(raw).expanduser()
        if path.is_file():
            if path.stat().st_size > MAX_RECEIPT_BYTES:
                raise ValueError(f"{path} is too large to be a receipt")
            raw = path.read_text(encoding="utf-8").strip()
        elif protocol.is_server_id(raw):
            return raw, None
        else:
            raise ValueError(f"--receipt {text[:80]!r} is not a file, receipt JSON or update id")
    try:
        body = protocol.parse_json(raw.encode("utf-8"), what="the receipt")
        receipt = protocol.convert(body, protocol.Receipt, what="the receipt")
    except protocol.ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not protocol.is_server_id(receipt.update_id):
        raise ValueError(f"the receipt's update_id {receipt.update_id[:80]!r} is not an id")
    return receipt.update_id, receipt.payload_digest


def _key(args: argparse.Namespace, server_key: str, out: TextIO) -> str:
    """The pinned key if this computer joined the project, else the server's (said so)."""
    from app.contributor.credentials import CredentialsError, project_key
    from federated.signing import fingerprint

    try:
        creds = _store(args).load(project_key(args.server, args.project))
    except CredentialsError:
        creds = None
    if creds is None:
        print(
            f"note: this computer has not joined {args.project} at {args.server}: checking "
            f"against the key the server gives now ({fingerprint(server_key)}); compare that "
            "fingerprint with the one the organiser published",
            file=out,
        )
        return server_key
    pinned = creds.project_public_key_b64
    if pinned != server_key:
        print(
            f"warning: the server now gives key {fingerprint(server_key)}, not the key "
            f"{fingerprint(pinned)} pinned when you joined; checking against the pinned key",
            file=out,
        )
    else:
        print(f"key: the one pinned when you joined ({fingerprint(pinned)})", file=out)
    return pinned


def _chain(client: CoordinatorClient, top: int, problems: list[str]) -> list[SignedManifest]:
    """The signed manifests of versions ``top`` … 0; one the server does not give (404, or
    not a signed manifest) is left out, with a problem saying so (the chain then shows a gap)."""
    from app.contributor.client import ServerError
    from federated.provenance import ProvenanceError, SignedManifest

    out = []
    for v in range(top, -1, -1):
        try:
            body = client.request_json("GET", f"{client.api}/versions/{v}/manifest")
            out.append(SignedManifest.from_wire(body))
        except ServerError as exc:
            if exc.status != 404:
                raise
            problems.append(f"version {v}: the server has no signed manifest for it ({exc})")
        except ProvenanceError as exc:
            problems.append(f"version {v}: {exc}")
    return out


def _proof(client: CoordinatorClient, update: str, version: int | None) -> protocol.InclusionProof:
    from federated import protocol

    url = f"{client.api}/proof" if version is None else f"{client.api}/versions/{version}/proof"
    body = client.request_json("GET", url, params={"update": update})
    return protocol.convert(body, protocol.InclusionProof, what="the inclusion proof")


def verify_receipt(
    client: CoordinatorClient,
    key_b64: str,
    update_id: str,
    payload_digest: str | None,
    version: int | None,
    current: int,
) -> tuple[protocol.ModelManifest, protocol.InclusionProof, int]:
    """Check the chain from the ``current`` version to 0 and the update's proof in
    ``version`` (default: the version it is in). Returns (that version's manifest, the
    proof, the top version checked); ``VerifyFailed`` listing every problem otherwise."""
    from app.contributor.client import ServerError
    from federated.provenance import Leaf, ProvenanceError, check_chain, verify_inclusion

    try:
        proof = _proof(client, update_id, version)
    except ServerError as exc:
        if exc.status != 404:
            raise
        raise VerifyFailed(f"  - the server has no proof for it: {exc}") from None
    problems: list[str] = []
    if version is not None and proof.version != version:
        problems.append(f"asked for a proof in version {version}, got one in {proof.version}")
    if proof.update_id != update_id:
        problems.append(f"the proof is for update {proof.update_id}, not {update_id}")
    if payload_digest is not None and proof.payload_digest != payload_digest:
        problems.append(
            f"the proof's payload {proof.payload_digest[:16]}… is not the receipt's "
            f"{payload_digest[:16]}…"
        )
    top = max(current, proof.version)
    report = check_chain(_chain(client, top, problems), key_b64, project=client.project)
    problems.extend(report.problems)
    manifest = next((m for m in report.manifests if m.version == proof.version), None)
    if manifest is None:
        problems.append(f"version {proof.version}'s signed manifest could not be checked")
    elif manifest.updates_root is None:
        problems.append(f"version {proof.version} was published without an updates root")
    else:
        if proof.size != manifest.updates or proof.updates_root != manifest.updates_root:
            problems.append(
                f"the proof is for a tree of {proof.size} updates under root "
                f"{proof.updates_root[:16]}…, but version {proof.version} is signed with "
                f"{manifest.updates} under {manifest.updates_root[:16]}…"
            )
        try:
            verify_inclusion(
                Leaf(update_id, payload_digest or proof.payload_digest),
                proof.index,
                manifest.updates,
                proof.path,
                manifest.updates_root,
            )
        except ProvenanceError as exc:
            problems.append(f"the inclusion proof fails: {exc}")
    if problems:
        raise VerifyFailed("\n".join(f"  - {p}" for p in problems))
    assert manifest is not None
    return manifest, proof, top


def cmd_verify(
    args: argparse.Namespace, out: TextIO, *, session: requests.Session | None = None
) -> int:
    from app.contributor.client import CoordinatorClient

    update_id, payload_digest = read_receipt(args.receipt)
    if args.version is not None and args.version < 0:
        raise ValueError("--version must be 0 or more")
    client = CoordinatorClient(args.server, args.project, insecure=args.insecure, session=session)
    try:
        project = client.get_project()
        key = _key(args, project.public_key, out)
        try:
            manifest, proof, top = verify_receipt(
                client, key, update_id, payload_digest, args.version, project.current_version
            )
        except VerifyFailed as exc:
            print(f"FAILED: update {update_id} of {args.project} does not check out:", file=out)
            print(str(exc), file=out)
            return EXIT_FAILED
    finally:
        client.close()
    if payload_digest is None:
        print("note: only an update id was given: its payload digest is the server's", file=out)
    print(
        f"OK: update {update_id} (payload {proof.payload_digest[:16]}…) is leaf "
        f"{proof.index + 1} of {manifest.updates} under the signed updates root of version "
        f"{manifest.version} (model {manifest.digest[:16]}…), and the chain from version "
        f"{top} back to 0 holds.",
        file=out,
    )
    return 0
