"""Barnraise contributor: the engine (``app.contributor``) and the tray shell (``app.tray``)."""
