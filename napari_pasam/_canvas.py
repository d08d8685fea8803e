"""One repaint per click: the viewer's window waits for the click's prediction.

A click adds its point to the prompt layer, which asks the canvas and the layer list for a
repaint, and starts the prediction in a worker; the layers get the prediction a few tens
of milliseconds later and ask for another repaint. Where the canvas is drawn on the CPU
(Mesa's software OpenGL: remote desktops, virtual machines, Xvfb) any repaint of the
window composes the canvas again, on the same cores as the decoder, and slows it down
(measured on the 2-core machine, ViT-B at 1024 px: the prediction in its worker took 62 ms
with the repaints, 47 ms without, 44 ms as a bare call). :class:`PaintHold` keeps the
viewer's window from repainting while a short prediction (the image already embedded)
runs, so the point and its mask appear in one repaint; it lets go when the prediction is
shown or has failed, and after ``max_ms`` at the latest, so a slow prediction never hides
the click for long. Events are still handled meanwhile; only painting waits.
"""

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

#: the longest a click waits for its prediction before it is drawn anyway
MAX_HOLD_MS = 200


def viewer_window(widget: QWidget) -> QWidget | None:
    """The top-level window ``widget`` (the dock) lives in; None when it is its own window
    (not docked in a viewer)."""
    window = widget.window()
    return None if window is widget else window


class PaintHold:
    """Holds the repaints of ``widget``'s viewer window (see the module docstring)."""

    def __init__(self, widget: QWidget, max_ms: int = MAX_HOLD_MS) -> None:
        self._widget = widget
        self._window: QWidget | None = None
        self._timer = QTimer(widget)
        self._timer.setSingleShot(True)
        self._timer.setInterval(max_ms)
        self._timer.timeout.connect(self.release)

    @property
    def held(self) -> bool:
        return self._timer.isActive()

    def hold(self) -> None:
        """Stop repainting until :meth:`release` or ``max_ms`` from now."""
        self._window = viewer_window(self._widget)
        if self._window is None:
            return
        self._window.setUpdatesEnabled(False)
        self._timer.start()

    def release(self) -> None:
        """Repaint again (at once, with everything that changed meanwhile)."""
        self._timer.stop()
        try:
            if self._window is not None and not self._window.updatesEnabled():
                self._window.setUpdatesEnabled(True)  # Qt schedules a repaint
        except RuntimeError:  # the viewer (and its window) closed meanwhile
            pass
        self._window = None
