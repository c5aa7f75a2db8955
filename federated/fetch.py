"""``python -m federated.fetch PAGE_URL``: a project's trained model, downloaded and checked.

The model belongs to everyone who trained it: this is the one command that takes it away.
It reads the project (its recipe, hyperparameters and signing key) from the coordinator
behind ``PAGE_URL`` (``https://host/p/NAME``), the signed manifest of the current version
(or ``--version N``), checks the signature against the project's key, downloads the model
(safetensors, float32) and checks it hashes to the digest the manifest names, then writes
it and prints how to load it. The key comes from the same server, so the signature proves
the model is the one the project published, not who runs the project: compare the
fingerprint printed with the one the organiser announced, or pass it as ``--fingerprint``
and the command refuses any other. Nothing received is executed or unpickled: the model
is safetensors, the answers JSON. The standard library's HTTP client, as the core imports
no HTTP library of the programs'.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from federated import protocol
from federated.errors import SignatureError
from federated.signing import fingerprint, verify

CHUNK = 1024 * 1024
TIMEOUT_S = 60.0
MAX_JSON_BYTES = 4 * 1024 * 1024
"""A project or manifest answer is a few KiB; anything near this is not one."""


class FetchError(Exception):
    """What went wrong, in words for the person who ran the command."""


def split_page_url(page_url: str) -> tuple[str, str]:
    """(server base URL, project name) of ``https://host[/prefix]/p/NAME``."""
    parts = urlsplit(page_url.strip())
    head, sep, name = parts.path.rstrip("/").rpartition("/p/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not sep:
        raise FetchError(f"{page_url!r} is not a project page URL (https://HOST/p/NAME)")
    if not protocol.is_project_name(name):
        raise FetchError(f"{name!r} is not a project name")
    return f"{parts.scheme}://{parts.netloc}{head}", name


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only: urllib would follow one to ftp:// as well."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise FetchError(f"{req.full_url} redirected to {newurl!r}, which is not HTTP")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HTTPOnlyRedirects)


def _open(url: str) -> Any:
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{url!r} is not an HTTP URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json, */*"})  # noqa: S310 (scheme checked above)
    try:
        return _OPENER.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace")
        raise FetchError(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"cannot reach {url}: {exc}") from None


def _json(url: str) -> Any:
    with _open(url) as response:
        body = response.read(MAX_JSON_BYTES + 1)
    if len(body) > MAX_JSON_BYTES:
        raise FetchError(f"{url} answered more than {MAX_JSON_BYTES} bytes of JSON")
    try:
        return protocol.parse_json(body, what=url)
    except protocol.ProtocolError as exc:
        raise FetchError(f"{url} did not answer JSON: {exc}") from None


def fetch_model(
    page_url: str,
    out: Path | None = None,
    *,
    version: int | None = None,
    expected_fingerprint: str | None = None,
) -> tuple[Path, protocol.ModelManifest, protocol.Project]:
    """Download, check and write the model; (its path, its manifest, the project)."""
    base, name = split_page_url(page_url)
    api = f"{base}/api/v1/projects/{name}"
    try:
        project = protocol.convert(_json(api), protocol.Project, what="the project")
    except protocol.ProtocolError as exc:
        raise FetchError(str(exc)) from None
    key_print = fingerprint(project.public_key)
    if expected_fingerprint and expected_fingerprint.strip().lower() != key_print:
        raise FetchError(
            f"project {name!r} signs with key {key_print}, not {expected_fingerprint}: "
            "refusing its model"
        )
    where = f"{api}/models/current" if version is None else f"{api}/versions/{version}/manifest"
    signed = _json(where)
    if not isinstance(signed, dict) or not isinstance(signed.get("manifest"), dict):
        raise FetchError(f"{where} did not answer a signed manifest")
    try:
        verify(project.public_key, signed["manifest"], str(signed.get("signature", "")))
        manifest = protocol.convert(signed, protocol.SignedModel, what="the manifest").manifest
    except (SignatureError, protocol.ProtocolError) as exc:
        raise FetchError(f"the manifest of {name!r} does not verify: {exc}") from None
    if manifest.project != name or (version is not None and manifest.version != version):
        raise FetchError(f"{where} answered the manifest of another model")
    target = out or Path(f"{name}-v{manifest.version}.safetensors")
    _download(f"{api}/models/{manifest.digest}", manifest.digest, target)
    return target, manifest, project


def _download(url: str, digest: str, target: Path) -> None:
    """Stream ``url`` to ``target`` through a temp file beside it, checked against
    ``digest`` before it takes the name: a cut or wrong download leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, _open(url) as response:
            while chunk := response.read(CHUNK):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != digest:
            raise FetchError(f"the model downloaded from {url} does not hash to {digest}")
        os.replace(tmp, target)
    except OSError as exc:
        raise FetchError(f"the download from {url} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def loading_snippet(path: Path, project: protocol.Project) -> str:
    """Python that loads the file into the recipe's model (the recipes ship with Barnraise)."""
    hparams = {k: project.hparams[k] for k in sorted(project.hparams)}
    return (
        "from federated.codec import decode_model\n"
        "from federated.recipes import get_recipe\n\n"
        f"recipe = get_recipe({project.recipe!r})\n"
        f"hparams = {hparams!r}\n"
        "model = recipe.build_model(hparams)\n"
        f"with open({str(path)!r}, 'rb') as f:\n"
        "    model.load_state_dict(decode_model(f.read(), recipe.tensor_spec(hparams)))\n"
        "model.eval()\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federated.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("page_url", help="the project's page, https://HOST/p/NAME")
    parser.add_argument("--version", type=int, help="a published version (default: the current)")
    parser.add_argument("--out", type=Path, help="where to write it (default NAME-vN.safetensors)")
    parser.add_argument("--fingerprint", help="the project key's fingerprint you expect")
    args = parser.parse_args(argv)
    try:
        path, manifest, project = fetch_model(
            args.page_url, args.out, version=args.version, expected_fingerprint=args.fingerprint
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{path}: {project.name} version {manifest.version}, sha256 {manifest.digest}, signed "
        f"by key {fingerprint(project.public_key)} (status {project.status})\n"
        f"\nLoad it with:\n\n{loading_snippet(path, project)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
