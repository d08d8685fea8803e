"""One repaint per click: the viewer's canvas waits for the click's prediction.

A click adds its point to the prompt layer, which asks the canvas for a repaint, and starts
the prediction in a worker; the layers get the prediction a few tens of milliseconds later
and ask for another repaint. Where the canvas is drawn on the CPU (Mesa's software OpenGL:
remote desktops, virtual machines, Xvfb) the first repaint runs on the same cores as the
decoder and slows it down. :class:`PaintHold` keeps the canvas from repainting while a
short prediction (the image already embedded) runs, so the point and its mask appear in
one repaint; it lets go when the prediction is shown or has failed, and after
``max_ms`` at the latest, so a slow prediction never hides the click for long.
"""

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

#: the longest a click waits for its prediction before it is drawn anyway
MAX_HOLD_MS = 200


def find_canvas(widget: QWidget) -> QWidget | None:
    """The viewer's canvas in the top-level window of ``widget`` (the dock): vispy's
    OpenGL widget; None when there is none (a widget not docked in a viewer)."""
    try:
        from qtpy.QtOpenGLWidgets import QOpenGLWidget
    except ImportError:  # Qt5 bindings: the class lives in QtWidgets
        from qtpy.QtWidgets import QOpenGLWidget
    window = widget.window()
    if window is widget:
        return None
    found = [
        w for w in window.findChildren(QOpenGLWidget) if type(w).__module__.startswith("vispy")
    ]
    return found[0] if found else None


class PaintHold:
    """Holds the canvas of ``widget``'s viewer (see the module docstring)."""

    def __init__(self, widget: QWidget, max_ms: int = MAX_HOLD_MS) -> None:
        self._widget = widget
        self._canvas: QWidget | None = None
        self._timer = QTimer(widget)
        self._timer.setSingleShot(True)
        self._timer.setInterval(max_ms)
        self._timer.timeout.connect(self.release)

    @property
    def held(self) -> bool:
        return self._timer.isActive()

    def hold(self) -> None:
        """Stop repainting until :meth:`release` or ``max_ms`` from now."""
        if self._canvas is None:
            self._canvas = find_canvas(self._widget)
        if self._canvas is None:
            return
        self._canvas.setUpdatesEnabled(False)
        self._timer.start()

    def release(self) -> None:
        """Repaint again (at once, with everything that changed meanwhile)."""
        self._timer.stop()
        try:
            if self._canvas is not None and not self._canvas.updatesEnabled():
                self._canvas.setUpdatesEnabled(True)  # Qt schedules a repaint
        except RuntimeError:  # the viewer (and its canvas) closed meanwhile
            self._canvas = None
