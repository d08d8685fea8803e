"""Prefetch while the user works, in a real napari viewer (Xvfb): after a click on slice z
the neighbouring slices are embedded in the background (a slice change then does not run
the encoder), a click during the prefetch is answered at once (the prefetch stops after the
item in progress), "Cancel", the panel's checkbox and closing the viewer stop it. The model
is the random-weight vit_tiny test checkpoint."""

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402
from napari_support import WAIT_MS, click, errors_since, layers_ready, loaded_widget  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: a test-only delay per image the segmenter is given, so that a prefetch of a few
#: slices takes long enough to be interrupted (the vit_tiny encoder takes milliseconds)
DELAY_S = 0.4


@pytest.fixture(scope="module")
def em_stack(isbi_dir: Path) -> np.ndarray:
    files = sorted((isbi_dir / "image").glob("*.png"), key=lambda p: int(p.stem))[:20]
    return np.stack([np.asarray(PILImage.open(f)) for f in files])


def annotating(viewer, qtbot, checkpoint, stack):
    widget = loaded_widget(viewer, qtbot, checkpoint)
    layer = viewer.add_image(stack, name="em")
    widget.start(layer)
    layers_ready(qtbot, widget)
    return widget


def finished(qtbot, run) -> None:
    qtbot.waitUntil(lambda: run.finished, timeout=WAIT_MS)


def test_neighbouring_slices_are_prefetched_after_a_click(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack
):
    viewer = make_napari_viewer()
    widget = annotating(viewer, qtbot, tiny_checkpoint, em_stack[:8])
    assert widget.prefetch_check.isChecked()  # on by default
    assert widget.prefetch_run is None  # nothing is prefetched before the first embedding
    viewer.dims.set_current_step(0, 4)
    n = len(notification_manager.records)
    runs = widget.predictor.encoder_runs
    click(qtbot, widget, (256, 256))
    assert widget.predictor.encoder_runs == runs + 1  # the click embedded slice 4
    qtbot.waitUntil(lambda: widget.prefetch_run is not None, timeout=WAIT_MS)
    run = widget.prefetch_run
    finished(qtbot, run)
    planes = [item.plane.leading for item in run.items]
    assert planes == [(4,), (3,), (5,), (2,), (6,)]  # the current slice, then nearest first
    assert (run.done, run.encoded, run.error) == (5, 4, None)
    # by the slot's background segmenter (same model and cache), not the click's
    assert widget.slot.background().predictor.encoder_runs == 4
    assert widget.predictor.encoder_runs == runs + 1
    assert widget.prefetch_label.text().startswith("Prefetched 5")

    # a slice change and a click there do not run the encoder (prefetch off: no new one)
    widget.prefetch_check.setChecked(False)
    runs = widget.predictor.encoder_runs
    for z in (3, 6, 2):
        viewer.dims.set_current_step(0, z)
        click(qtbot, widget, (200, 300))
        assert widget.current is not None and widget.current.leading == (z,)
    assert widget.predictor.encoder_runs == runs
    assert widget.prefetch_run is run  # the checkbox off: nothing more was prefetched
    viewer.dims.set_current_step(0, 7)
    click(qtbot, widget, (200, 300))
    assert widget.predictor.encoder_runs == runs + 1  # not a neighbour: embedded at the click
    assert errors_since(n) == []


def test_a_click_stops_the_prefetch_and_cancel_and_closing_stop_it(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack
):
    viewer = make_napari_viewer()
    widget = annotating(viewer, qtbot, tiny_checkpoint, em_stack)
    widget.prefetch_depth = len(em_stack)  # every slice: long enough to interrupt
    seg = widget.slot.background()  # the prefetch's segmenter (same model and cache)
    set_image = seg.set_image

    def slow_set_image(*args, **kwargs):
        time.sleep(DELAY_S)
        return set_image(*args, **kwargs)

    seg.set_image = slow_set_image
    n = len(notification_manager.records)
    click(qtbot, widget, (256, 256))
    qtbot.waitUntil(lambda: widget.prefetch_run is not None, timeout=WAIT_MS)
    first = widget.prefetch_run
    assert first.total == len(em_stack)
    qtbot.waitUntil(lambda: first.done >= 2, timeout=WAIT_MS)

    # a click during the prefetch: answered without waiting for the item in progress (the
    # prefetch embeds with its own segmenter, outside the model slot's lock)
    t0 = time.perf_counter()
    click(qtbot, widget, (300, 200))
    waited = time.perf_counter() - t0
    assert first.stop.is_set()
    finished(qtbot, first)
    assert first.done < first.total and first.error is None
    assert len(widget.current.prompts.points) == 2
    remaining = (first.total - first.done) * DELAY_S
    assert waited < remaining / 2, (waited, remaining)
    assert waited < DELAY_S, waited  # not even the item in progress

    # the model is free again: the prefetch goes on with what is not cached yet
    qtbot.waitUntil(lambda: widget.prefetch_run is not first, timeout=WAIT_MS)
    second = widget.prefetch_run
    assert second.total == first.total - first.done
    qtbot.waitUntil(lambda: second.done >= 1, timeout=WAIT_MS)
    widget.cancel()  # the task panel's Cancel
    finished(qtbot, second)
    assert second.done < second.total
    assert "stopped" in widget.prefetch_label.text()
    time.sleep(2 * DELAY_S)
    assert widget.prefetch_run is second  # nothing restarted it

    # the checkbox: off stops a running prefetch, on starts one
    widget.schedule_prefetch()
    third = widget.prefetch_run
    assert third is not second and not third.finished
    widget.prefetch_check.setChecked(False)
    finished(qtbot, third)
    assert third.done < third.total
    widget.prefetch_check.setChecked(True)
    fourth = widget.prefetch_run
    assert fourth is not third and not fourth.finished
    qtbot.waitUntil(lambda: fourth.done >= 1, timeout=WAIT_MS)
    assert errors_since(n) == []

    # closing the viewer stops it after the item in progress (the window deletes itself on
    # close: the deferred deletion the event loop runs is run here)
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    viewer.close()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    qtbot.waitUntil(lambda: fourth.finished, timeout=10 * 1000)
    assert fourth.stop.is_set() and fourth.done < fourth.total
