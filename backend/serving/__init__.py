"""The embedded HTTP/1.1 server under the WSGI app (``backend.serving.server``)."""

from backend.serving.limits import ServerLimits
from backend.serving.parking import PARK, POLL_DEADLINE, RESUMED
from backend.serving.server import Server

__all__ = ["PARK", "POLL_DEADLINE", "RESUMED", "Server", "ServerLimits"]
