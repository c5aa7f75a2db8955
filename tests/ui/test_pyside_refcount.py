"""The installed PySide6 must not over-release ``None`` on void-returning calls.

PySide6-Essentials 6.12.0 drops one reference to ``None`` too many on every void call
(``QPainterPath.lineTo``, ``QPainter.setPen``, ...). CPython 3.12+ makes ``None`` immortal so
nothing shows; on 3.11 its refcount reaches zero after a few thousand calls and the
interpreter aborts with "Fatal Python error: none_dealloc" — the tray died that way while
drawing its charts (issue 9). pyproject.toml keeps the app below 6.12; this test checks the
PySide6 that is really installed, with the void calls ``LineChart.paintEvent`` makes.

The loop runs in a child interpreter so an abort fails this test with the child's stderr
instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

# 6.12.0 aborts CPython 3.11 within a few thousand calls (about 0.2 s); this many calls of
# each kind also exceed None's whole refcount at start-up, so a broken release cannot pass.
CALLS = 200_000
# None's refcount moves a little with whatever the interpreter does meanwhile; a broken
# release moves it by one per call, so CALLS is far outside this slack.
REFCOUNT_SLACK = 1_000
CHILD_TIMEOUT_S = 60

REPRODUCTION = textwrap.dedent(
    """
    import json, sys
    import PySide6, shiboken6
    from PySide6.QtCore import QPointF, QRectF
    from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen

    calls = int(sys.argv[1])
    app = QGuiApplication([])  # QPainter on an image needs a GUI application (offscreen)
    image = QImage(64, 64, QImage.Format.Format_ARGB32_Premultiplied)
    painter = QPainter(image)
    pen = QPen(QColor("#2563EB"), 2)
    before = sys.getrefcount(None)
    # The standalone reproduction from the issue, then the other void calls paintEvent makes.
    path = QPainterPath(QPointF(0, 0))
    for i in range(1, calls + 1):
        path.lineTo(QPointF(i, i))
    for i in range(calls):
        pen.setWidthF(1 + (i & 3))
        painter.setPen(pen)
    rect = QRectF(0, 0, 32, 32)
    for i in range(calls // 10):
        painter.drawLine(QPointF(0, 0), QPointF(i & 63, 63))
        painter.drawRoundedRect(rect, 6, 6)
    after = sys.getrefcount(None)
    painter.end()
    print(json.dumps({
        "pyside6": PySide6.__version__,
        "shiboken6": shiboken6.__version__,
        "python": sys.version.split()[0],
        "elements": path.elementCount(),
        "none_refcount_drift": after - before,
    }))
    """
)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def test_void_qt_calls_do_not_over_release_none() -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    child = subprocess.run(
        [sys.executable, "-c", REPRODUCTION, str(CALLS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert child.returncode == 0, (
        f"the PySide6 reproduction crashed ({_describe(child.returncode)}): this PySide6 "
        "over-releases None on void calls and will abort the tray while it draws charts; "
        "install a release inside pyproject.toml's range.\n"
        f"stderr:\n{child.stderr[-4000:]}"
    )
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["elements"] == CALLS + 1, report
    assert abs(report["none_refcount_drift"]) < REFCOUNT_SLACK, (
        f"None lost {-report['none_refcount_drift']} references over {3 * CALLS} void calls "
        f"on PySide6 {report['pyside6']} (Python {report['python']}): a refcount bug that "
        "aborts CPython 3.11 with none_dealloc"
    )
