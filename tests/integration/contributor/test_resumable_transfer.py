"""Issue 13, large payloads: a ~100 MB update upload and a ~100 MB model download, each cut
several times on the wire, complete: one accepted update (one receipt, one update id on
every answer), its credit counted once, the payload's digest verified, nothing partial
left, and the coordinator's memory O(chunk), not O(payload), while the bytes travel.

Real processes, no mocks: the coordinator is ``barnraise-backend serve`` in a subprocess
(so its RSS is its own, read from /proc), the contributor is the engine's own
``CoordinatorClient`` (``upload_update``, ``download_model``), and between them a proxy
that closes the connection each time another ``CUT_EVERY`` bytes went through it in the
direction under test.

The cheapest honest 100 MB model: ``byte-lm``'s medium preset (25.8M parameters, 103 MB
in f32) with one validation window of 8 bytes, so creating the project takes ~2 s; the
update is a made-up small delta of that model's shapes (``backend.testing.small_delta``),
encoded with the project's f32 codec, which the coordinator verifies like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.contributor.client import CoordinatorClient, RetryPolicy
from backend.coordinator import Coordinator
from backend.testing import free_port, small_delta, wait_until_healthy
from federated import protocol
from federated.codec import encode_update
from federated.signing import SigningKey

MiB = 1024 * 1024
CUT_EVERY = 25 * MiB
RSS_BOUND = 64 * MiB
"""The coordinator's RSS may grow this much above its baseline while a payload travels."""
BACKEND = Path(sys.executable).with_name("barnraise-backend")


class CuttingProxy:
    """Forwards loopback TCP to ``upstream``; whenever another ``every`` bytes have gone
    through in the direction ``cutting`` ("up": to the coordinator, "down": back), it
    closes that connection on both sides, mid-message."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.cutting: str | None = None
        self.every = CUT_EVERY
        self.cuts = {"up": 0, "down": 0}
        self._sent = {"up": 0, "down": 0}
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        self._socks: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, direction: str | None) -> None:
        with self._lock:
            self.cutting = direction
            self._sent = {"up": 0, "down": 0}

    def sent(self, direction: str) -> int:
        """Bytes that went through in ``direction`` since the last ``cut``."""
        with self._lock:
            return self._sent[direction]

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _close(s)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=30)
            with self._lock:
                self._socks |= {client, server}
            pair = (client, server)
            threading.Thread(
                target=self._pump, args=(client, server, "up", pair), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, "down", pair), daemon=True
            ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        direction: str,
        pair: tuple[socket.socket, ...],
    ) -> None:
        try:
            while data := src.recv(256 * 1024):
                with self._lock:
                    cutting = self.cutting == direction
                    before = self._sent[direction]
                    self._sent[direction] += len(data)
                    boundary = (before // self.every + 1) * self.every
                    crossed = cutting and before + len(data) >= boundary
                    if crossed:
                        self.cuts[direction] += 1
                if crossed:
                    dst.sendall(data[: boundary - before])
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in pair:
            _close(s)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class RssSampler:
    """The coordinator's VmRSS every few milliseconds, with whether the upload was still
    travelling (no complete partial yet) at that moment."""

    pid: int
    partials: Path
    total: int = 0
    blob: Path = Path("/nonexistent")
    _arrived: bool = False
    samples: list[tuple[int, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _travelling(self) -> bool:
        """True until the last byte arrived: a complete partial (being verified) or the
        payload's blob (verified) ends the transfer for good."""
        if not self._arrived and self.total:
            with contextlib.suppress(OSError):
                done = any(p.stat().st_size >= self.total for p in self.partials.iterdir())
                self._arrived = done or self.blob.exists()
        return not self._arrived

    def __enter__(self) -> RssSampler:
        def run() -> None:
            while not self._stop.wait(0.005):
                travelling = self._travelling()
                self.samples.append((self.rss(), travelling))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak(self, *, travelling_only: bool) -> int:
        return max(r for r, t in self.samples if t or not travelling_only)


@pytest.fixture
def big_coordinator(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path, dict]]:
    data = tmp_path / "backend"
    c = Coordinator(data, start_worker=False)
    c.create_project(
        "big",
        recipe="byte-lm",
        hparams={"preset": "medium", "eval_windows": 1, "seq_len": 8},
        settings={
            "codec": "f32",
            "mode": "async",
            "buffer_size": 50,  # no aggregation during the test: the credit stays pending
            "max_payload_bytes": 128 * MiB,
            "spot_check_rate": 0,
            "lease_s": 600.0,
        },
    )
    spec = c.runtime(c.project("big")).spec
    c.close()
    port = free_port()
    log = (tmp_path / "backend.log").open("wb")
    proc = subprocess.Popen(
        [str(BACKEND), "serve", "--data", str(data), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout=60)
        yield url, proc, data, spec
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_100mb_upload_and_download_cut_several_times_complete_once(
    big_coordinator: tuple[str, subprocess.Popen[bytes], Path, dict], tmp_path: Path
) -> None:
    url, proc, data, spec = big_coordinator
    upstream = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    proxy = CuttingProxy(upstream)
    key = SigningKey.generate()
    client = CoordinatorClient(
        proxy.url,
        "big",
        cache_dir=tmp_path / "cache",
        retry=RetryPolicy(attempts=6, base_s=0.01, cap_s=0.05),
    )
    try:
        joined = client.join(key, display_name="volunteer")
        client.token = joined.token
        client.project_public_key_b64 = joined.project.public_key
        task = client.lease(wait=0)
        assert task is not None
        payload = encode_update(small_delta(spec, 1e-4), "f32").payload
        assert 95 * MiB < len(payload) <= 128 * MiB
        digest = hashlib.sha256(payload).hexdigest()
        manifest = protocol.UpdateManifest(
            project="big",
            task_id=task.task_id,
            client_id=joined.client_id,
            base_digest=task.manifest["base_digest"],
            payload_digest=digest,
            codec="f32",
            num_examples=int(task.manifest["max_examples"]),
            metrics={"loss_before": 5.0, "loss_after": 4.9},
        )
        partials = data / "blobs" / "partials"

        # --- the upload, cut every 25 MB on its way to the coordinator
        blob = data / "blobs" / digest[:2] / digest
        sampler = RssSampler(proc.pid, partials, total=len(payload), blob=blob)
        baseline = sampler.rss()
        proxy.cut("up")
        started = time.monotonic()
        with sampler:
            receipt = client.upload_update(task.task_id, payload, manifest, key)
        upload_s = time.monotonic() - started
        upload_cuts = proxy.cuts["up"]
        sent_up = proxy.sent("up")
        proxy.cut(None)
        assert upload_cuts >= 3, proxy.cuts
        # resumed, not sent again: each cut cost at most one chunk (8 MiB) of the payload
        assert sent_up < len(payload) + upload_cuts * protocol.limits.RESUME_CHUNK_BYTES + MiB
        assert receipt.payload_digest == digest
        travel_growth = sampler.peak(travelling_only=True) - baseline
        overall_growth = sampler.peak(travelling_only=False) - baseline
        print(
            f"\nupload: {len(payload) / MiB:.1f} MiB, {upload_cuts} cuts, {upload_s:.1f} s; "
            f"coordinator RSS baseline {baseline / MiB:.0f} MiB, +{travel_growth / MiB:.1f} "
            f"MiB while travelling, +{overall_growth / MiB:.1f} MiB with the verification "
            f"({len(sampler.samples)} samples)"
        )
        assert travel_growth < RSS_BOUND

        # one accepted update, one receipt, one update id on every answer; credit once
        again = client.upload_update(task.task_id, payload, manifest, key)
        assert again == receipt
        me = client.me()
        assert me.updates_accepted == 1 and me.updates_rejected == 0
        assert me.credit_pending == pytest.approx(receipt.credit)
        board = client.leaderboard()
        assert [row.updates_accepted for row in board.contributors] == [1]
        assert list(partials.iterdir()) == []
        assert list((data / "blobs" / "tmp").iterdir()) == []
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest

        # --- the model download, cut every 25 MB on its way back
        model = task.manifest["base_digest"]
        down = RssSampler(proc.pid, partials)
        baseline = down.rss()
        proxy.cut("down")
        started = time.monotonic()
        with down:
            path = client.download_model(model)
        download_s = time.monotonic() - started
        download_cuts = proxy.cuts["down"]
        proxy.cut(None)
        size = path.stat().st_size
        growth = down.peak(travelling_only=False) - baseline
        print(
            f"download: {size / MiB:.1f} MiB, {download_cuts} cuts, {download_s:.1f} s; "
            f"coordinator RSS +{growth / MiB:.1f} MiB"
        )
        assert size > 95 * MiB and download_cuts >= 3, proxy.cuts
        assert hashlib.sha256(path.read_bytes()).hexdigest() == model
        assert growth < RSS_BOUND
    finally:
        client.close()
        proxy.stop()
