"""Public HTML pages: the project list ``/``, the leaderboard ``/p/NAME``, and error pages.

Pure functions from plain frozen dataclasses to a complete HTML document (``str``); the
router fills the views from the store and sends the result with ``PAGE_HEADERS``::

    from backend.pages import (PAGE_HEADERS, ProjectSummaryView, ProjectPageView,
        ContributorRow, TeamRow, VersionPoint, render_index, render_project_page,
        render_error_page)

    render_index(projects: Sequence[ProjectSummaryView], *, now: float | None = None) -> str
    render_project_page(view: ProjectPageView) -> str
    render_error_page(status: int, message: str) -> str

The stylesheet (``style.css`` here) is inlined in each page's ``<style>`` element, so there
is no static route to serve; ``STYLESHEET`` holds it. ``PAGE_HEADERS`` carries a
Content-Security-Policy that allows exactly that stylesheet and no script at all.
All user text (names, teams, descriptions, even the page URL) is escaped by the renderer:
pass raw strings.
"""

from __future__ import annotations

from backend.pages.chart import render_line_chart
from backend.pages.document import CONTENT_SECURITY_POLICY, PAGE_HEADERS, STYLESHEET
from backend.pages.render import (
    render_error_page,
    render_index,
    render_project_page,
)
from backend.pages.views import (
    CREDIT_UNIT,
    ActionRow,
    ContributorRow,
    PrivacyView,
    ProjectPageView,
    ProjectSummaryView,
    TeamRow,
    VersionPoint,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CREDIT_UNIT",
    "PAGE_HEADERS",
    "STYLESHEET",
    "ActionRow",
    "ContributorRow",
    "PrivacyView",
    "ProjectPageView",
    "ProjectSummaryView",
    "TeamRow",
    "VersionPoint",
    "render_error_page",
    "render_index",
    "render_line_chart",
    "render_project_page",
]
