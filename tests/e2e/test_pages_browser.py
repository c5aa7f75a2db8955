"""The public pages in a real browser: Debian's chromium, headless, JavaScript on.

Two servers on loopback: a tiny http.server with rendered sample pages (a busy project
with hostile names, an empty one, the index), and the real backend (``backend.wsgi``)
with contributors who joined over HTTP under hostile names. For each: load, check the
DOM chromium built (rows present, no injected element, no script ran), and save
screenshots at desktop and phone width under tests/e2e/artifacts/.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import page_samples as samples
import pytest

from backend.pages import (
    PAGE_HEADERS,
    render_error_page,
    render_index,
    render_project_page,
)
from backend.wsgi import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = (1280, 1800)
PHONE = (390, 2400)
BROWSER_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium: apt-get install -y chromium chromium-driver",
    ),
]

CONTROL_PAGE = (
    "<!doctype html><html><head><title>control</title></head><body>"
    "<script>document.body.setAttribute('data-js-ran', 'yes')</script></body></html>"
)


# --------------------------------------------------------------------------- browser


def run_chromium(url: str, *args: str, profile: Path) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--lang=en-US",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def dump_dom(url: str, profile: Path) -> str:
    return run_chromium(url, "--dump-dom", profile=profile)


def screenshot(
    url: str, name: str, size: tuple[int, int], profile: Path, *, dark: bool = False
) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    extra = ["--force-dark-mode"] if dark else []
    run_chromium(
        url,
        f"--screenshot={path}",
        f"--window-size={size[0]},{size[1]}",
        *extra,
        profile=profile,
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == size
    assert len(data) > 20_000, f"{path} looks blank ({len(data)} bytes)"
    return path


class Dom(HTMLParser):
    """What the tests need from a dumped DOM: elements, attributes, text per table body."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_tbody = False
        self._cell: list[str] | None = None
        self.title = ""
        self._in_title = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id") or "?"
            self.rows[self._table] = []
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody and self._table:
            self.rows[self._table].append([])
        elif tag == "td" and self._in_tbody and self._table:
            self._cell = []
        elif tag == "title" and not self.title:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]

    def body_attrs(self) -> dict[str, str | None]:
        return self.tags("body")[0]


def assert_nothing_injected(dom: Dom, title: str | None = None) -> None:
    """Only the elements our pages use; no script, no image, no handler attributes; the
    title ``title`` when given (a page titled by hostile text), else none a script set."""
    assert dom.tags("script") == []
    assert dom.tags("img") == []
    assert dom.tags("iframe") == []
    for tag, attrs in dom.elements:
        handlers = [a for a in attrs if a.startswith("on")]
        assert handlers == [], f"<{tag}> has event handler attributes {handlers}"
    assert "data-pwned" not in dom.body_attrs()
    if title is not None:
        assert dom.title == title
    else:
        assert "pwned" not in dom.title


@pytest.fixture(scope="module")
def profile() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="barnraise-chromium-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- static pages


@pytest.fixture(scope="module")
def static_server() -> Iterator[str]:
    def pages(base: str) -> dict[str, tuple[int, str, bool]]:
        return {
            "/": (200, render_index(samples.project_summaries(), now=samples.NOW), True),
            "/p/digits": (200, render_project_page(samples.busy_project(f"{base}/p/digits")), True),
            "/p/fresh": (200, render_project_page(samples.empty_project(f"{base}/p/fresh")), True),
            "/p/private-lm": (
                200,
                render_project_page(samples.private_lm_project(f"{base}/p/private-lm")),
                True,
            ),
            "/control": (200, CONTROL_PAGE, False),
        }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://{self.headers['Host']}"
            status, body, ours = pages(base).get(
                self.path,
                (404, render_error_page(404, f"Nothing at {self.path}"), True),
            )
            data = body.encode("utf-8")
            self.send_response(status)
            headers = PAGE_HEADERS if ours else (("Content-Type", "text/html; charset=utf-8"),)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_harness_sees_scripts_that_run(static_server: str, profile: Path) -> None:
    # The control: with JavaScript on, a script's effect shows in the dumped DOM, so the
    # absence of such effects on our pages means something.
    dom = Dom(dump_dom(f"{static_server}/control", profile))
    assert dom.body_attrs().get("data-js-ran") == "yes"


def test_project_page_dom(static_server: str, profile: Path) -> None:
    dom = Dom(dump_dom(f"{static_server}/p/digits", profile))
    assert_nothing_injected(dom)
    assert dom.title == "digits · Barnraise"
    contributors = dom.rows["contributors-table"]
    assert len(contributors) == 11
    names = [row[1] for row in contributors]
    assert samples.XSS_NAME in names
    assert samples.XSS_TITLE in names
    assert contributors[2][2] == samples.XSS_TEAM
    assert contributors[0][:4] == ["1", "Ada Lovelace", "Analytical Engines", "1,234,568"]
    assert len(dom.rows["teams-table"]) == 4
    assert len(dom.rows["versions-table"]) == 12
    assert len(dom.tags("svg")) == 2
    assert len(dom.tags("polyline")) == 2
    text = "".join(dom.text)
    assert f"{static_server}/p/digits" in text
    assert "3f9a:11c2:7be0:94d1:0a5e:c8f7:2d33:6b10" in text


def test_a_private_language_models_page_dom(static_server: str, profile: Path) -> None:
    """The Privacy section and the model's samples in a real browser: the budget spent, what
    the project gave up, and text the model wrote shown as text, never run."""
    dom = Dom(dump_dom(f"{static_server}/p/private-lm", profile))
    assert_nothing_injected(dom)
    text = "".join(dom.text)
    assert "7.91" in text and "of 8" in text and "training has ended" in text
    assert "User-level differential privacy (DP-FedAvg)" in text
    assert "Given up for privacy" in text and "median-norm screens" in text
    assert samples.XSS_NAME in text and samples.XSS_TEAM in text  # as text, in the samples
    assert "123,456,789" in text
    assert len(dom.tags("meter")) == 1


def test_empty_and_index_pages_dom(static_server: str, profile: Path) -> None:
    empty = Dom(dump_dom(f"{static_server}/p/fresh", profile))
    assert_nothing_injected(empty)
    assert "No contributions yet" in "".join(empty.text)
    assert empty.tags("polyline") == []
    index = Dom(dump_dom(f"{static_server}/", profile))
    assert_nothing_injected(index)
    assert {"/p/digits", "/p/tabular-hospital", "/p/fresh"} <= {
        a.get("href") for a in index.tags("a")
    }
    assert samples.XSS_NAME in "".join(index.text)


def test_screenshots_desktop_phone_dark(static_server: str, profile: Path) -> None:
    url = f"{static_server}/p/digits"
    screenshot(url, "project-desktop.png", DESKTOP, profile)
    screenshot(url, "project-phone.png", PHONE, profile)
    screenshot(url, "project-desktop-dark.png", DESKTOP, profile, dark=True)
    screenshot(f"{static_server}/p/fresh", "project-empty-phone.png", PHONE, profile)
    screenshot(f"{static_server}/", "index-desktop.png", (1280, 900), profile)
    screenshot(f"{static_server}/p/private-lm", "project-private-lm.png", (1280, 2400), profile)
    screenshot(f"{static_server}/p/nope", "error-phone.png", (390, 800), profile)


# --------------------------------------------------------------------------- real backend


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class ThreadingWSGIServer(ThreadingHTTPServer, WSGIServer):
        pass

    app = create_app(tmp_path_factory.mktemp("backend-data"), rate=None)
    app.coordinator.create_project(
        "digits",
        recipe="digits-mlp",
        settings={"clients_per_round": 2, "min_updates": 2, "spot_check_rate": 0},
    )
    app.coordinator.create_project(
        "done",
        recipe="digits-mlp",
        hparams={"num_shards": 2},
        settings={"model_license": "CC-BY-4.0"},
    )
    app.coordinator.finish("done", "accuracy high enough for the demo")
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = app.public_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name, team in [
            (samples.XSS_NAME, samples.XSS_TEAM),
            ("Grace Hopper", "Compilers & Co"),
            (samples.XSS_TITLE, None),
        ]:
            join(base, "digits", name, team)
        work_a_round(app, base)
        yield base
    finally:
        server.shutdown()
        server.server_close()
        app.close()


CONTRIBUTORS: dict[str, str] = {}
"""Display name -> client id of the contributors of ``work_a_round``."""


def work_a_round(app: Any, base: str) -> None:
    """Ada and Alan of one team train version 1 (one accepted update each, credited);
    then one of Ada's uploads is refused (a bad signature)."""
    import requests

    from backend.demo_clients import DemoContributor
    from backend.testing import upload_request, upload_small_delta
    from federated.signing import SigningKey

    session = requests.Session()
    workers = [
        DemoContributor(base, "digits", name, team="Analytical Engines", session=session)
        for name in ("Ada Lovelace", "Alan Turing")
    ]
    for who in workers:
        who.join()
        CONTRIBUTORS[who.display_name] = who.client_id
        task = who.lease(0)
        assert task is not None
        assert upload_small_delta(session, app.coordinator, who, task, base_url=base).ok
    deadline = time.monotonic() + 60
    while app.coordinator.project("digits").current_version < 1:
        assert time.monotonic() < deadline, "version 1 was not published in time"
        time.sleep(0.1)
    ada = workers[0]
    task = ada.lease(5)
    assert task is not None
    refused = upload_request(
        session,
        base,
        project="digits",
        token=ada.token,
        key=SigningKey.generate(),
        task=task,
        client_id=ada.client_id,
        payload=b"\0" * 64,
    )
    assert refused.status_code == 403


def _post(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body if body is not None else {}).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def join(base: str, project: str, name: str, team: str | None) -> dict[str, Any]:
    from federated.signing import SigningKey

    key = SigningKey.generate()
    api = f"{base}/api/v1/projects/{project}"
    challenge = _post(f"{api}/challenge")["challenge"]
    statement = {
        "challenge": challenge,
        "project": project,
        "public_key": key.public_key_b64,
        "purpose": "join",
    }
    return _post(
        f"{api}/join",
        {
            "display_name": name,
            "team": team,
            "public_key": key.public_key_b64,
            "challenge": challenge,
            "signature": key.sign(statement),
            "invite": None,
        },
    )


def test_real_backend_page(real_server: str, profile: Path) -> None:
    url = f"{real_server}/p/digits"
    dom = Dom(dump_dom(url, profile))
    assert_nothing_injected(dom)
    text = "".join(dom.text)
    assert samples.XSS_NAME in text
    assert samples.XSS_TITLE in text
    assert url in text  # the join address is the page's own URL
    assert len(dom.tags("svg")) == 2
    index = Dom(dump_dom(f"{real_server}/", profile))
    assert "/p/digits" in {a.get("href") for a in index.tags("a")}
    missing = Dom(dump_dom(f"{real_server}/p/no-such-project", profile))
    assert_nothing_injected(missing)
    assert "404" in "".join(missing.text)
    screenshot(url, "real-project-desktop.png", DESKTOP, profile)
    screenshot(url, "real-project-phone.png", PHONE, profile)


def test_a_finished_projects_page_thanks_and_its_model_downloads(
    real_server: str, profile: Path
) -> None:
    """Finished: the page says so and why, the join card is the thanks, and the link it
    offers downloads the final model as safetensors from the real coordinator."""
    url = f"{real_server}/p/done"
    dom = Dom(dump_dom(url, profile))
    assert_nothing_injected(dom)
    text = "".join(dom.text)
    assert "Finished — thank you" in text
    assert "accuracy high enough for the demo" in text
    assert "Join this project" not in text
    (link,) = [a for a in dom.tags("a") if "download" in a]
    assert link["download"] == "done-v0.safetensors"
    href = str(link["href"])
    with urllib.request.urlopen(f"{real_server}{href}", timeout=30) as response:
        payload = response.read()
    from safetensors.numpy import load as load_safetensors

    tensors = load_safetensors(payload)
    assert tensors and all(t.dtype.name == "float32" for t in tensors.values())
    screenshot(url, "real-project-finished.png", DESKTOP, profile)


def test_the_model_card_in_a_browser(real_server: str, profile: Path) -> None:
    """What the model is, who made it, its licence and the one command that takes it away,
    linked from the project page."""
    page = Dom(dump_dom(f"{real_server}/p/done", profile))
    assert "/p/done/model" in {a.get("href") for a in page.tags("a")}
    url = f"{real_server}/p/done/model"
    dom = Dom(dump_dom(url, profile))
    assert_nothing_injected(dom)
    text = "".join(dom.text)
    assert "Final model" in text and "CC-BY-4.0" in text
    assert f"python -m federated.fetch {real_server}/p/done --fingerprint" in text
    assert "accuracy high enough for the demo" in text
    assert "Hyperparameters" in text and "num_shards" in text and "Held-out metrics" in text
    assert len(dom.tags("table")) == 4
    screenshot(url, "real-model-card.png", DESKTOP, profile)


def test_a_contributor_page_from_the_real_backend(real_server: str, profile: Path) -> None:
    """Reached from the leaderboard: the name links there; credit, the refusal and its code
    shown; hostile names elsewhere on the server injected nothing."""
    board = Dom(dump_dom(f"{real_server}/p/digits", profile))
    ada = CONTRIBUTORS["Ada Lovelace"]
    hrefs = {a.get("href") for a in board.tags("a")}
    assert f"/p/digits/c/{ada}" in hrefs and "/p/digits/t/Analytical%20Engines" in hrefs
    assert "/api/v1/projects/digits/export/users.json.gz" in hrefs
    url = f"{real_server}/p/digits/c/{ada}"
    dom = Dom(dump_dom(url, profile))
    assert_nothing_injected(dom)
    assert dom.title == "Ada Lovelace · digits · Barnraise"
    text = "".join(dom.text)
    assert "Analytical Engines" in text and "bad_signature" in text
    assert dom.rows["refusal-codes-table"][0][0] == "bad_signature"
    assert len(dom.tags("svg")) == 1
    hostile = next(
        a.get("href") for a in board.tags("a") if str(a.get("href")).startswith("/p/digits/t/%22")
    )
    hostile_team = Dom(dump_dom(f"{real_server}{hostile}", profile))
    assert_nothing_injected(hostile_team, f"{samples.XSS_TEAM} · team · digits · Barnraise")
    assert samples.XSS_TEAM in "".join(hostile_team.text)
    screenshot(url, "real-contributor-desktop.png", DESKTOP, profile)
    screenshot(url, "real-contributor-phone.png", PHONE, profile)


def test_a_team_page_from_the_real_backend(real_server: str, profile: Path) -> None:
    url = f"{real_server}/p/digits/t/Analytical%20Engines"
    dom = Dom(dump_dom(url, profile))
    assert_nothing_injected(dom)
    members = dom.rows["members-table"]
    assert [row[1].split(" #")[0] for row in members] == ["Ada Lovelace", "Alan Turing"]
    hrefs = {a.get("href") for a in dom.tags("a")}
    assert {f"/p/digits/c/{c}" for c in CONTRIBUTORS.values()} <= hrefs
    assert len(dom.tags("svg")) == 1
    missing = Dom(dump_dom(f"{real_server}/p/digits/t/Nobody", profile))
    assert_nothing_injected(missing)
    assert "404" in "".join(missing.text)
    screenshot(url, "real-team-desktop.png", DESKTOP, profile)
