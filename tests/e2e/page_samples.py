"""Sample views for the page tests: a busy project with a hostile contributor name."""

from __future__ import annotations

import math

from backend.pages import ContributorRow, ProjectPageView, ProjectSummaryView, TeamRow, VersionPoint

NOW = 1_764_220_000.0
XSS_NAME = "<script>alert(1)</script>"
XSS_TEAM = '"><img src=x onerror="document.body.dataset.pwned=\'team\'">'
XSS_TITLE = "<script>document.title='pwned'</script>"


def busy_project(page_url: str = "http://127.0.0.1:8080/p/digits") -> ProjectPageView:
    names = [
        ("Ada Lovelace", "Analytical Engines"),
        ("Grace Hopper", "Compilers & Co"),
        (XSS_NAME, XSS_TEAM),
        ("Alan Turing", "Analytical Engines"),
        ("Katherine Johnson", None),
        ("Edsger W. Dijkstra", "Compilers & Co"),
        ("Margaret Hamilton", "Apollo"),
        (XSS_TITLE, None),
        ("Barbara Liskov", "Apollo"),
        ("Ковалевская Софья", "Δ team"),
        ("a-very-long-display-name-without-any-spaces-at-all-0123456789", None),
    ]
    contributors = tuple(
        ContributorRow(
            name=name,
            team=team,
            credit=1_234_567.8 / (i + 1) ** 1.3,
            recent_credit=98_765.4 / (i + 1),
            updates_accepted=412 // (i + 1),
            updates_rejected=3 if i == 2 else 0,
            last_seen=NOW - [20, 300, 4000, 90_000, 700_000, 5, 61, 3600, 86_400 * 3, 30, 200][i],
        )
        for i, (name, team) in enumerate(names)
    )
    teams = (
        TeamRow("Analytical Engines", 2, 1_650_000.2, 120_000.0, 560),
        TeamRow("Compilers & Co", 2, 600_321.0, 60_000.0, 240),
        TeamRow(XSS_TEAM, 1, 300_000.0, 32_000.0, 137),
        TeamRow("Apollo", 2, 180_000.5, 22_000.0, 95),
    )
    versions = tuple(
        VersionPoint(
            version=v,
            created_at=NOW - (40 - v) * 600,
            accuracy=None if v == 0 else 0.97 - 0.87 * math.exp(-v / 7),
            loss=2.30 * math.exp(-v / 8) + 0.08,
            updates=0 if v == 0 else 12 + v % 5,
            contributors=0 if v == 0 else 5 + v % 4,
        )
        for v in range(0, 41)
    )
    return ProjectPageView(
        name="digits",
        page_url=page_url,
        now=NOW,
        description="Handwritten digit recognition (8x8 images, 10 classes) — a first project "
        "to try Barnraise: small, fast, and it runs on any laptop.",
        recipe="digits-mlp",
        recipe_version=1,
        strategy="fedbuff",
        mode="async",
        status="open",
        data_mode="builtin",
        codec="int8",
        current_version=40,
        key_fingerprint="3f9a:11c2:7be0:94d1:0a5e:c8f7:2d33:6b10",
        contributors=contributors,
        teams=teams,
        versions=versions,
        contributors_total=len(contributors),
    )


def empty_project(page_url: str = "http://127.0.0.1:8080/p/fresh") -> ProjectPageView:
    return ProjectPageView(
        name="fresh",
        page_url=page_url,
        now=NOW,
        description="",
        recipe="digits-mlp",
        strategy="fedavg",
        key_fingerprint="aa11:bb22:cc33:dd44",
    )


def project_summaries() -> list[ProjectSummaryView]:
    return [
        ProjectSummaryView(
            name="digits",
            description=busy_project().description,
            recipe="digits-mlp",
            mode="async",
            status="open",
            current_version=40,
            contributors=11,
            total_credit=2_730_321.7,
            accuracy=0.9512,
            updated_at=NOW - 120,
        ),
        ProjectSummaryView(
            name="tabular-hospital",
            description=f"Readmission risk from local CSV files. {XSS_NAME}",
            recipe="tabular-logreg",
            status="paused",
            current_version=7,
            contributors=3,
            total_credit=512.25,
            accuracy=0.71,
            updated_at=NOW - 86_400 * 2,
        ),
        ProjectSummaryView(name="fresh", recipe="digits-mlp", status="closed"),
    ]


def private_lm_project(page_url: str = "http://127.0.0.1:8080/p/private-lm") -> ProjectPageView:
    """A user-level private language model whose budget is spent, and whose model writes
    markup: its samples and privacy section must reach the reader as text."""
    from dataclasses import replace

    from backend.pages import PrivacyView

    busy = busy_project(page_url)
    return replace(
        busy,
        name="private-lm",
        recipe="byte-lm",
        strategy="diloco",
        status="closed",
        privacy=PrivacyView(
            mechanism="dp-fedavg",
            epsilon=8.0,
            delta=1e-5,
            noise_multiplier=4.03,
            clip_norm=0.4213,
            clip_quantile=0.5,
            epsilon_spent=7.91,
            steps=40,
            exhausted=True,
        ),
        samples=(
            ("def ", XSS_NAME + " return self._cache\n"),
            ("import ", XSS_TEAM + "\n"),
        ),
        tokens_trained=123_456_789,
    )
