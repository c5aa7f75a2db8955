"""Helpers shared by every test layer. ``from tests.support import wait_until``."""

from tests.support.wait import wait_until

__all__ = ["wait_until"]
