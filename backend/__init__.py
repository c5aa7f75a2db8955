"""The Barnraise coordinator: a framework-free WSGI app over SQLite and a blob folder.

Entry points: ``backend.wsgi.create_app(data_dir)`` (the WSGI callable),
``backend.wsgi.app_from_env()`` (for gunicorn, reads BARNRAISE_DATA),
``backend.coordinator.Coordinator`` (the operations, without HTTP), and the
``barnraise-backend`` CLI in ``backend.cli``.
"""
