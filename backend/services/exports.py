"""The daily exports, BOINC style: ``users.json.gz`` and ``teams.json.gz`` of a project.

Third-party stats sites fetch them once a day instead of scraping the leaderboard. Each
file is generated at most once per ``EXPORT_INTERVAL_S`` per project and kept in the data
folder (``exports/PROJECT/KIND.json.gz``); its modification time is its generation time
(on the coordinator's clock). The JSON is streamed row by row into a ``gzip.GzipFile``
over a temp file in the same folder, which then replaces the old file (``os.replace``):
several coordinator processes sharing the data folder may generate at once, and a reader
always opens one whole file, the newest or the one before. The schema is
``federated.protocol.exports`` (``UsersExport``, ``TeamsExport``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from backend.services.context import ServiceContext
from backend.services.standings import StandingsService
from backend.store import ProjectRecord
from federated import protocol

EXPORT_INTERVAL_S = 86_400.0
"""An export is generated again once it is this old (a day), never sooner."""

ExportKind = Literal["users", "teams"]
EXPORT_KINDS: tuple[ExportKind, ...] = ("users", "teams")

_HASH_CHUNK = 1 << 16


@dataclass
class ExportFile:
    """An export opened for reading: the caller streams ``file`` and closes it."""

    file: BinaryIO
    generated_at: float
    size: int
    etag: str  # '"<sha256 hex of the gzip bytes>"'


class ExportService:
    """Generates, keeps and opens the exports of each project."""

    def __init__(self, ctx: ServiceContext, standings: StandingsService) -> None:
        self._ctx = ctx
        self._standings = standings
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._etags: dict[Path, tuple[int, int, int, str]] = {}

    def path(self, project: ProjectRecord, kind: ExportKind) -> Path:
        return self._ctx.data_dir / "exports" / project.name / f"{kind}.json.gz"

    def open(self, project: ProjectRecord, kind: ExportKind) -> ExportFile:
        """The project's export of ``kind``, generated first if it is missing or a day old."""
        path = self.path(project, kind)
        if not self._fresh(path):
            with self._lock(project.name, kind):
                if not self._fresh(path):  # another thread may have made it meanwhile
                    self.generate(project, kind)
        f = open(path, "rb")  # noqa: SIM115 - the caller streams it, then closes it
        try:
            st = os.fstat(f.fileno())
            return ExportFile(f, st.st_mtime, st.st_size, self._etag(path, f, st))
        except BaseException:
            f.close()
            raise

    def generate(self, project: ProjectRecord, kind: ExportKind) -> Path:
        """Write the export now (whatever its age); the path it replaced."""
        now = self._ctx.clock()
        path = self.path(project, kind)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{kind}-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=int(now)) as gz,
            ):
                for chunk in self._json(project, kind, now):
                    gz.write(chunk)
            os.chmod(tmp, 0o644)  # public data: a web server in front may serve the folder
            os.utime(tmp, (now, now))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    # ------------------------------------------------------------------------------------

    def _fresh(self, path: Path) -> bool:
        try:
            age = self._ctx.clock() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return 0 <= age < EXPORT_INTERVAL_S  # made "in the future": the clock went back

    def _lock(self, project: str, kind: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((project, kind), threading.Lock())

    def _etag(self, path: Path, f: BinaryIO, st: os.stat_result) -> str:
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._etags.get(path)
        if known is not None and known[:3] == key:
            return known[3]
        digest = hashlib.sha256()
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
        f.seek(0)
        etag = f'"{digest.hexdigest()}"'
        self._etags[path] = (*key, etag)
        return etag

    def _json(self, project: ProjectRecord, kind: ExportKind, now: float) -> Iterator[bytes]:
        """The export's JSON in pieces: a head, one row at a time, a tail."""
        board = self._standings.leaderboard(project)
        head = {"project": project.name, "generated_at": int(now), "credit_unit": "GFLOP"}
        rows: Iterable[msgspec.Struct]
        if kind == "users":
            with self._ctx.store.read() as tx:
                joined = {c.id: c.created_at for c in tx.clients(project.id)}
            rows = (
                protocol.ExportUser(
                    id=r.client_id,
                    name=r.display_name,
                    team=r.team,
                    total_credit=max(0.0, r.credit),
                    recent_credit=r.recent_credit,
                    updates_accepted=r.updates_accepted,
                    first_seen=int(joined.get(r.client_id, 0)),
                    last_seen=int(r.last_seen or 0),
                    rank=r.rank or i,
                    banned=r.banned,
                )
                for i, r in enumerate(board.contributors, start=1)
            )
        else:
            ids: dict[str, list[str]] = {}
            for r in board.contributors:
                if r.team:
                    ids.setdefault(r.team, []).append(r.client_id)
            rows = (
                protocol.ExportTeam(
                    name=t.team,
                    members=t.members,
                    member_ids=ids.get(t.team, []),
                    total_credit=max(0.0, t.credit),
                    recent_credit=t.recent_credit,
                    updates_accepted=t.updates_accepted,
                    rank=t.rank or i,
                )
                for i, t in enumerate(board.teams, start=1)
            )
        encoder = msgspec.json.Encoder()
        yield encoder.encode(head)[:-1] + f',"{kind}":['.encode()
        for i, row in enumerate(rows):
            yield (b"," if i else b"") + encoder.encode(row)
        yield b"]}"
