"""HTTP handlers. Each is ``handler(app, request, **captured) -> Response``; they parse and
validate the request, call the ``Coordinator`` and shape the answer. No SQL here."""
