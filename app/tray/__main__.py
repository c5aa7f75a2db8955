"""``python -m app.tray``: the tray app."""

import sys

from app.tray import main

sys.exit(main())
