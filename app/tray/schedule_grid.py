"""The weekly schedule editor: a 7x24 grid painted with the mouse.

Press on a cell and drag: the first cell's state decides the stroke (pressing an allowed
hour erases, pressing a blocked hour paints), so one gesture never toggles back and forth.
``schedule_changed`` fires once per stroke, on release, with the new ``WeeklySchedule``.
Arrow keys move a focus cell and Space toggles it, for people who do not use a mouse.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.contributor.schedule import DAYS, HOURS_PER_DAY, WeeklySchedule

__all__ = ["ScheduleGrid"]

ALLOWED_COLOUR = "#22A35A"
BLOCKED_COLOUR = "#E5E7EB"


class ScheduleGrid(QWidget):
    schedule_changed = Signal(object)  # WeeklySchedule, once per finished stroke

    LABEL_WIDTH = 40
    HEADER_HEIGHT = 18
    MIN_CELL = 14

    def __init__(
        self, schedule: WeeklySchedule | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._schedule = schedule or WeeklySchedule.always()
        self._stroke_value: bool | None = None
        self._stroke_changed = False
        self._focus = (0, 0)
        self.setMouseTracking(False)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumSize(
            self.LABEL_WIDTH + HOURS_PER_DAY * self.MIN_CELL + 2, self.sizeHint().height()
        )
        self.setToolTip(
            "Green hours may compute. Press and drag to paint; start on a green hour to erase."
        )
        self.setAccessibleName("Weekly schedule")

    def sizeHint(self) -> QSize:
        return QSize(
            self.LABEL_WIDTH + HOURS_PER_DAY * 22 + 2, self.HEADER_HEIGHT + len(DAYS) * 22 + 2
        )

    # --- model -----------------------------------------------------------------------------
    @property
    def schedule(self) -> WeeklySchedule:
        return self._schedule

    def set_schedule(self, schedule: WeeklySchedule) -> None:
        self._schedule = schedule
        self.update()

    # --- geometry --------------------------------------------------------------------------
    def _cell_size(self) -> tuple[float, float]:
        width = (self.width() - self.LABEL_WIDTH - 2) / HOURS_PER_DAY
        height = (self.height() - self.HEADER_HEIGHT - 2) / len(DAYS)
        return width, height

    def cell_rect(self, day: int, hour: int) -> QRect:
        """The cell's rectangle in widget coordinates (tests click its centre)."""
        w, h = self._cell_size()
        return QRectF(
            self.LABEL_WIDTH + hour * w + 1, self.HEADER_HEIGHT + day * h + 1, w, h
        ).toAlignedRect()

    def cell_at(self, pos: QPoint) -> tuple[int, int] | None:
        w, h = self._cell_size()
        x = pos.x() - self.LABEL_WIDTH - 1
        y = pos.y() - self.HEADER_HEIGHT - 1
        if x < 0 or y < 0:
            return None
        hour, day = int(x // w), int(y // h)
        if 0 <= day < len(DAYS) and 0 <= hour < HOURS_PER_DAY:
            return day, hour
        return None

    # --- painting strokes ------------------------------------------------------------------
    def _paint_cell(self, day: int, hour: int) -> None:
        assert self._stroke_value is not None
        if self._schedule.hour_allowed(day, hour) != self._stroke_value:
            self._schedule = self._schedule.with_hour(day, hour, self._stroke_value)
            self._stroke_changed = True
            self.update(self.cell_rect(day, hour).adjusted(-1, -1, 1, 1))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        cell = self.cell_at(event.position().toPoint())
        if cell is None:
            return
        day, hour = cell
        self._focus = cell
        self._stroke_value = not self._schedule.hour_allowed(day, hour)
        self._stroke_changed = False
        self._paint_cell(day, hour)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._stroke_value is None:
            return
        cell = self.cell_at(event.position().toPoint())
        if cell is not None:
            self._paint_cell(*cell)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._stroke_value is None:
            return
        cell = self.cell_at(event.position().toPoint())
        if cell is not None:
            self._paint_cell(*cell)
        self._stroke_value = None
        if self._stroke_changed:
            self.schedule_changed.emit(self._schedule)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        day, hour = self._focus
        moves = {
            Qt.Key.Key_Left: (0, -1),
            Qt.Key.Key_Right: (0, 1),
            Qt.Key.Key_Up: (-1, 0),
            Qt.Key.Key_Down: (1, 0),
        }
        key = Qt.Key(event.key())
        if key in moves:
            dd, dh = moves[key]
            self._focus = ((day + dd) % len(DAYS), (hour + dh) % HOURS_PER_DAY)
            self.update()
        elif key == Qt.Key.Key_Space:
            self._schedule = self._schedule.with_hour(
                day, hour, not self._schedule.hour_allowed(day, hour)
            )
            self.update()
            self.schedule_changed.emit(self._schedule)
        else:
            super().keyPressEvent(event)

    # --- drawing ---------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        text = self.palette().color(QPalette.ColorRole.Text)
        muted = QColor(text)
        muted.setAlpha(160)
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.8))
        painter.setFont(small)
        w, h = self._cell_size()
        painter.setPen(muted)
        for hour in range(0, HOURS_PER_DAY, 3):
            painter.drawText(
                QRectF(self.LABEL_WIDTH + hour * w, 0, w * 3, self.HEADER_HEIGHT),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                f"{hour:02d}",
            )
        for day, name in enumerate(DAYS):
            painter.drawText(
                QRectF(0, self.HEADER_HEIGHT + day * h, self.LABEL_WIDTH - 6, h),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                name[:3],
            )
        allowed, blocked = QColor(ALLOWED_COLOUR), QColor(BLOCKED_COLOUR)
        gap = QPen(self.palette().color(QPalette.ColorRole.Window), 1)
        for day in range(len(DAYS)):
            for hour in range(HOURS_PER_DAY):
                rect = self.cell_rect(day, hour)
                painter.setPen(gap)
                painter.setBrush(allowed if self._schedule.hour_allowed(day, hour) else blocked)
                painter.drawRect(rect.adjusted(0, 0, -1, -1))
        if self.hasFocus():
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Highlight), 2))
            painter.drawRect(self.cell_rect(*self._focus).adjusted(1, 1, -2, -2))
        painter.end()
