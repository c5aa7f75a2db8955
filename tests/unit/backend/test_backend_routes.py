"""The route table: path -> handler -> captured arguments; 404 and 405."""

from __future__ import annotations

import pytest

from backend.api import exports, models, pages, profile_pages, projects, stats, system, tasks
from backend.errors import MethodNotAllowed, NotFound
from backend.wsgi import ROUTES, resolve

D = "ab" * 32


@pytest.mark.parametrize(
    ("method", "path", "handler", "args"),
    [
        ("GET", "/healthz", system.healthz, {}),
        ("GET", "/metrics", system.metrics, {}),
        ("GET", "/", pages.index_page, {}),
        ("GET", "/p/digits", pages.project_page, {"project": "digits"}),
        ("GET", "/p/digits/", pages.project_page, {"project": "digits"}),
        ("GET", "/api/v1/openapi.json", system.openapi, {}),
        ("GET", "/api/v1/projects", projects.list_projects, {}),
        ("GET", "/api/v1/projects/digits", projects.show_project, {"project": "digits"}),
        (
            "POST",
            "/api/v1/projects/digits/challenge",
            projects.new_challenge,
            {"project": "digits"},
        ),
        ("POST", "/api/v1/projects/digits/join", projects.join_project, {"project": "digits"}),
        ("POST", "/api/v1/projects/digits/tasks/lease", tasks.lease_task, {"project": "digits"}),
        (
            "POST",
            "/api/v1/projects/p/tasks/T1234567/heartbeat",
            tasks.heartbeat_task,
            {"project": "p", "task_id": "T1234567"},
        ),
        (
            "POST",
            "/api/v1/projects/p/tasks/T1234567/release",
            tasks.release_task,
            {"project": "p", "task_id": "T1234567"},
        ),
        (
            "PUT",
            "/api/v1/projects/p/tasks/T1234567/update",
            tasks.upload_update,
            {"project": "p", "task_id": "T1234567"},
        ),
        ("GET", "/api/v1/projects/p/models/current", models.current_model, {"project": "p"}),
        (
            "GET",
            f"/api/v1/projects/p/models/{D}",
            models.download_model,
            {"project": "p", "digest": D},
        ),
        (
            "HEAD",
            f"/api/v1/projects/p/models/{D}",
            models.download_model,
            {"project": "p", "digest": D},
        ),
        ("GET", "/api/v1/projects/p/leaderboard", stats.leaderboard, {"project": "p"}),
        ("GET", "/api/v1/projects/p/stats", stats.project_stats, {"project": "p"}),
        ("GET", "/api/v1/projects/p/me", stats.me, {"project": "p"}),
        (
            "GET",
            "/p/digits/c/cL7n2p9qR4s6t8u0v1w2",
            profile_pages.contributor_page,
            {"project": "digits", "client_id": "cL7n2p9qR4s6t8u0v1w2"},
        ),
        (
            "GET",
            "/p/digits/t/Analytical Engines/",
            profile_pages.team_page,
            {"project": "digits", "team": "Analytical Engines"},
        ),
        (
            "GET",
            "/api/v1/projects/p/export/users.json.gz",
            exports.users_export,
            {"project": "p"},
        ),
        (
            "GET",
            "/api/v1/projects/p/export/teams.json.gz",
            exports.teams_export,
            {"project": "p"},
        ),
        # Segments are captured as they come; handlers answer bad_id for what is not an id.
        ("POST", "/api/v1/projects/../join", projects.join_project, {"project": ".."}),
        (
            "PUT",
            "/api/v1/projects/p/tasks/../update",
            tasks.upload_update,
            {"project": "p", "task_id": ".."},
        ),
    ],
)
def test_path_resolves_to_handler_with_arguments(
    method: str, path: str, handler: object, args: dict[str, str]
) -> None:
    _name, found, captured = resolve(method, path)
    assert found is handler
    assert captured == args


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/api/v1",
        "/api/v1/projects/p/tasks/a/b/update",
        "/api/v1/projects/p/extra/x",
        "/p/a/b",
    ],
)
def test_unknown_paths_are_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        resolve("GET", path)


def test_wrong_method_is_405_with_allow() -> None:
    with pytest.raises(MethodNotAllowed) as info:
        resolve("GET", "/api/v1/projects/p/join")
    assert ("Allow", "POST") in info.value.extra_headers


def test_route_names_are_unique() -> None:
    names = [r[0] for r in ROUTES]
    assert len(names) == len(set(names))
