"""The packaging tests check the built artefacts in dist/ (`make package`), not the source tree.

Tests marked ``package`` run only when selected (``pytest -m package``, as `make test-package`
does), so `make test` never spends minutes on a bundle that may be stale. They skip with a
reason when dist/ has nothing to test.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "package: checks the built bundle and packages in dist/ (make test-package)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "package" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="checks the built packages: run `make package test-package`")
    for item in items:
        if "package" in item.keywords:
            item.add_marker(skip)
