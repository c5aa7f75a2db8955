"""The HTML pages: escaping, valid SVG, empty states, formatting, CSP."""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from backend.pages import (
    CONTENT_SECURITY_POLICY,
    PAGE_HEADERS,
    STYLESHEET,
    ContributorRow,
    ProjectPageView,
    ProjectSummaryView,
    TeamRow,
    VersionPoint,
    render_error_page,
    render_index,
    render_line_chart,
    render_project_page,
)
from backend.pages.chart import nice_ticks
from backend.pages.formatting import format_credit, format_percent, format_relative

NOW = 1_764_220_000.0
XSS = "<script>alert(1)</script>"
SVG_NS = "{http://www.w3.org/2000/svg}"
VOID = {"meta", "link", "br", "hr", "img", "input", "circle", "line", "polyline", "rect", "path"}


class _Collector(HTMLParser):
    """Collects tags, text, and checks that non-void elements nest and close properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    assert collector.errors == []
    assert collector.stack == []
    return collector


def view(**overrides: object) -> ProjectPageView:
    base: dict[str, object] = dict(
        name="digits",
        page_url="https://barn.example/p/digits",
        now=NOW,
        description="Digits <b>bold</b> & more",
        recipe="digits-mlp",
        strategy="fedavg",
        key_fingerprint="ab12:cd34",
        contributors=(
            ContributorRow("Ada", "Engines", 1_234_567.8, 1000.0, 10, 0, NOW - 30),
            ContributorRow(XSS, '"><img src=x onerror=alert(2)>', 12.5, 1.0, 1, 2, None),
        ),
        teams=(TeamRow("Engines", 1, 1_234_567.8, 1000.0, 10),),
        versions=tuple(
            VersionPoint(v, NOW - 600 * (5 - v), 0.5 + v / 20, 2.0 - v / 5, 3, 2) for v in range(6)
        ),
    )
    base.update(overrides)
    return ProjectPageView(**base)  # type: ignore[arg-type]


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def test_hostile_names_render_as_text_never_as_markup() -> None:
    html = render_project_page(view())
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html
    parsed = parse(html)
    assert [t for t, _ in parsed.tags if t in {"script", "img", "iframe", "object"}] == []
    text = "".join(parsed.text)
    assert XSS in text
    assert '"><img src=x onerror=alert(2)>' in text
    assert "Digits <b>bold</b> & more" in text


def test_page_shows_rows_join_url_and_fingerprint() -> None:
    html = render_project_page(view())
    text = "".join(parse(html).text)
    assert "https://barn.example/p/digits" in text
    assert "ab12:cd34" in text
    assert "1,234,568" in text  # thousands separators
    assert "GFLOP" in text
    assert "just now" in text and "never" in text
    assert (
        html.count("<tr") == 1 + 2 + 1 + 1 + 1 + 6
    )  # heads + 2 contributors + 1 team + 6 versions


def test_svg_charts_are_valid_xml_with_a_line_per_series() -> None:
    charts = svgs(render_project_page(view()))
    assert len(charts) == 2
    for chart in charts:
        assert chart.tag == f"{SVG_NS}svg"
        assert chart.find(f".//{SVG_NS}polyline") is not None
        assert len(chart.findall(f".//{SVG_NS}circle")) == 6


def test_empty_project_renders_placeholders() -> None:
    html = render_project_page(view(contributors=(), teams=(), versions=(), description=""))
    text = "".join(parse(html).text)
    assert "No contributions yet" in text
    assert "No teams yet" in text
    charts = svgs(html)
    assert len(charts) == 2
    for chart in charts:
        assert chart.find(f".//{SVG_NS}polyline") is None
        assert "No model versions yet" in "".join(chart.itertext())


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(0, None)],
        [(3, 0.5)],
        [(0, 0.1), (1, None), (2, 0.3), (3, 0.4)],
        [(v, float(v)) for v in range(500)],
        [(0, float("nan")), (1, float("inf")), (2, 1.0)],
        [(0, 5.0), (1, 5.0)],
    ],
)
def test_chart_edge_cases_are_valid_svg(points: list[tuple[float, float | None]]) -> None:
    svg = render_line_chart(
        points, title="t <&>", x_label="x", y_label="y", y_format=lambda y: f"{y:g}"
    )
    root = ET.fromstring(svg)
    assert root.find(f"{SVG_NS}title") is not None
    assert root.findtext(f"{SVG_NS}title") == "t <&>"
    for circle in root.iter(f"{SVG_NS}circle"):
        assert float(circle.get("cx", "nan")) == pytest.approx(float(circle.get("cx", "0")))


def test_one_point_draws_one_marker_and_no_line() -> None:
    root = ET.fromstring(
        render_line_chart([(7, 0.9)], title="a", x_label="x", y_label="y", y_format=str)
    )
    assert len(root.findall(f".//{SVG_NS}circle")) == 1
    assert root.find(f".//{SVG_NS}polyline") is None


def test_gaps_split_the_line() -> None:
    root = ET.fromstring(
        render_line_chart(
            [(0, 1.0), (1, 2.0), (2, None), (3, 1.0), (4, 0.5)],
            title="a",
            x_label="x",
            y_label="y",
            y_format=str,
        )
    )
    assert len(root.findall(f".//{SVG_NS}polyline")) == 2


def test_index_lists_projects_escaped_and_has_an_empty_state() -> None:
    html = render_index(
        [
            ProjectSummaryView(name="digits", description=XSS, accuracy=0.95, total_credit=1e6),
            ProjectSummaryView(name="other", status="paused"),
        ],
        now=NOW,
    )
    parsed = parse(html)
    assert XSS not in html and XSS in "".join(parsed.text)
    hrefs = [a.get("href") for t, a in parsed.tags if t == "a"]
    assert "/p/digits" in hrefs and "/p/other" in hrefs
    assert "No projects yet" in "".join(parse(render_index([])).text)


def test_error_page_escapes_the_message() -> None:
    html = render_error_page(404, f"No project named {XSS}")
    parsed = parse(html)
    assert XSS not in html
    assert "Not Found" in "".join(parsed.text)
    assert render_error_page(599, "x").count("599") >= 1


def test_csp_allows_exactly_the_inline_stylesheet_and_no_script() -> None:
    html = render_project_page(view())
    style = re.search(r"<style>(.*?)</style>", html, flags=re.S)
    assert style is not None and style.group(1) == STYLESHEET
    digest = base64.b64encode(hashlib.sha256(STYLESHEET.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # falls back to default-src 'none'
    assert dict(PAGE_HEADERS)["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert ' style="' not in html  # inline style attributes would be blocked by the CSP


def test_stylesheet_has_dark_mode_and_narrow_layout() -> None:
    assert "prefers-color-scheme: dark" in STYLESHEET
    assert "overflow-x: auto" in STYLESHEET
    assert "max-width: 520px" in STYLESHEET


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (12.5, "12.5"), (999.94, "999.9"), (1234.5, "1,234"), (1_234_567.8, "1,234,568")],
)
def test_format_credit(value: float, text: str) -> None:
    assert format_credit(value) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (-50, "just now"),
        (5, "just now"),
        (61, "1 min ago"),
        (3 * 3600 + 5, "3 h ago"),
        (86_400 * 1.5, "1 day ago"),
        (86_400 * 9, "9 days ago"),
        (86_400 * 400, "on 2024-10-23"),
    ],
)
def test_format_relative(ago: float, text: str) -> None:
    assert format_relative(NOW - ago, NOW) == text


def test_format_percent_and_missing_values() -> None:
    assert format_percent(0.9512) == "95.1%"
    assert format_percent(None) == "–"
    assert format_relative(None, NOW) == "never"


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0, 2.3) == [0, 1.0, 2.0]
    assert nice_ticks(0, 0.9) == [0, 0.25, 0.5, 0.75]
    assert nice_ticks(3, 3) == [3]
    assert nice_ticks(0, 40)[-1] == 40


def test_top_n_note_and_closed_project() -> None:
    html = render_project_page(view(contributors_total=250, status="closed"))
    text = "".join(parse(html).text)
    assert "Showing the top 2 of 250 contributors" in text
    assert "no longer takes contributions" in text
