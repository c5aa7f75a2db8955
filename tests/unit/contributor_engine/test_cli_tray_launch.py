"""What desktop entries run (`barnraise %u`, autostart's `--minimized`) is routed to the tray."""

from __future__ import annotations

import pytest

from app.cli import tray_arguments


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["barnraise://join?url=https%3A%2F%2Fh%2Fp%2Fx"],
            ["--join", "barnraise://join?url=https%3A%2F%2Fh%2Fp%2Fx"],
        ),
        (["--minimized"], ["--minimized"]),
        (["--credentials", "c.json", "--show"], ["--credentials", "c.json", "--show"]),
        (["--quit-after=3"], ["--quit-after=3"]),
        (
            ["--data-dir", "d", "barnraise:join?url=x"],
            ["--data-dir", "d", "--join", "barnraise:join?url=x"],
        ),
    ],
)
def test_tray_launches_are_recognised(argv: list[str], expected: list[str]) -> None:
    assert tray_arguments(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [[], ["--headless"], ["join", "https://h/p/x", "--yes"], ["status", "--json"], ["--version"]],
)
def test_cli_commands_stay_with_the_cli(argv: list[str]) -> None:
    assert tray_arguments(argv) is None
