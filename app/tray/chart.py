"""A small line chart painted with QPainter (QtCharts is not part of PySide6-essentials)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

__all__ = ["REPAINT_INTERVAL_MS", "LineChart"]

# A chart of minutes of history gains nothing from more frames than this: repainting on every
# engine event (several a second with short tasks) kept a whole core busy in the tray.
REPAINT_INTERVAL_MS = 500


def _nice_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value / 1000:.1f}k"
    if magnitude >= 10:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


class LineChart(QWidget):
    """One time series (x = epoch seconds) with a title, a filled area and y-axis labels."""

    MARGIN_LEFT = 44
    MARGIN = 10
    TITLE_HEIGHT = 22

    def __init__(
        self, title: str, colour: str, empty_text: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.colour = QColor(colour)
        self.empty_text = empty_text
        self._points: list[tuple[float, float]] = []
        # How often the chart was drawn and with how many points the last time: the soak
        # test and bench/footprint.py read these (through --stats-file) to know the charts
        # really repaint while the engine trains.
        self.paints = 0
        self.painted_points = 0
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(REPAINT_INTERVAL_MS)
        self._repaint.timeout.connect(self.update)
        self.setMinimumSize(220, 140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(360, 180)

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(self._points)

    def set_points(self, points: Sequence[tuple[float, float]]) -> None:
        """Show these points from the next frame on (at most one frame per
        REPAINT_INTERVAL_MS, however often the points change)."""
        self._points = [(x, y) for x, y in points if math.isfinite(y)]
        if not self._repaint.isActive():
            self._repaint.start()

    def paintEvent(self, event: QPaintEvent) -> None:
        self.paints += 1
        self.painted_points = len(self._points)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        base = palette.color(QPalette.ColorRole.Base)
        text = palette.color(QPalette.ColorRole.Text)
        grid = QColor(text)
        grid.setAlpha(40)
        muted = QColor(text)
        muted.setAlpha(150)

        outer = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(QPen(grid, 1))
        painter.setBrush(base)
        painter.drawRoundedRect(outer, 6, 6)

        title_font = QFont(self.font())
        title_font.setBold(True)
        painter.setFont(title_font)
        painter.setPen(text)
        painter.drawText(
            QRectF(self.MARGIN, 4, outer.width() - 2 * self.MARGIN, self.TITLE_HEIGHT),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            self.title,
        )
        plot = QRectF(
            self.MARGIN_LEFT,
            self.TITLE_HEIGHT + 8,
            outer.width() - self.MARGIN_LEFT - self.MARGIN,
            outer.height() - self.TITLE_HEIGHT - 8 - 22,
        )
        painter.setFont(self.font())
        if len(self._points) < 2:
            painter.setPen(muted)
            painter.drawText(
                plot, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.empty_text
            )
            painter.end()
            return

        xs = [p[0] for p in self._points]
        ys = [p[1] for p in self._points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(0.0, min(ys)), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y1 = y0 + 1
        y1 += (y1 - y0) * 0.08  # headroom so the line does not touch the top

        def to_screen(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                plot.bottom() - (y - y0) / (y1 - y0) * plot.height(),
            )

        # Grid and y labels.
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.85))
        painter.setFont(small)
        for i in range(4):
            value = y0 + (y1 - y0) * i / 3
            y = plot.bottom() - plot.height() * i / 3
            painter.setPen(QPen(grid, 1))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(muted)
            painter.drawText(
                QRectF(0, y - 8, self.MARGIN_LEFT - 6, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                _nice_number(value),
            )
        # x labels: first and last time.
        fmt = "%H:%M" if x1 - x0 < 86400 else "%d %b"
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 4, 80, 16),
            Qt.AlignmentFlag.AlignLeft,
            time.strftime(fmt, time.localtime(x0)),
        )
        painter.drawText(
            QRectF(plot.right() - 80, plot.bottom() + 4, 80, 16),
            Qt.AlignmentFlag.AlignRight,
            time.strftime(fmt, time.localtime(x1)),
        )

        line = QPainterPath(to_screen(*self._points[0]))
        for point in self._points[1:]:
            line.lineTo(to_screen(*point))
        area = QPainterPath(line)
        area.lineTo(QPointF(to_screen(x1, y0).x(), plot.bottom()))
        area.lineTo(QPointF(to_screen(x0, y0).x(), plot.bottom()))
        area.closeSubpath()
        fill = QColor(self.colour)
        fill.setAlpha(45)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(fill)
        painter.drawPath(area)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(self.colour, 2))
        painter.drawPath(line)
        painter.setBrush(self.colour)
        painter.drawEllipse(to_screen(*self._points[-1]), 3, 3)
        painter.end()
