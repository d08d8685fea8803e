"""Large dask-backed images in the annotator, in a real napari viewer (Xvfb): a 6000 x 6000
uint16 image is segmented through the core's tiled path reading only the chunks of the
windows it embeds (never the whole image), the mask lands where the core puts it on the
whole image, and an image whose annotation layers cannot fit in memory is refused with a
message. The model is the random-weight vit_tiny test checkpoint (1024-px input: images
with a side above 2048 px are tiled)."""

import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
da = pytest.importorskip("dask.array")

from napari.utils.notifications import notification_manager  # noqa: E402
from napari_support import errors_since, layers_ready, loaded_widget, wait_idle  # noqa: E402

import napari_pasam  # noqa: E402
from napari_pasam import large  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SIDE = 6000
CHUNK = 500
#: bright discs (y, x, radius) on a textured background
DISCS = ((3100, 2950, 45), (1200, 4800, 30))


class Reads:
    """Pixels computed by a lazy image's blocks (thread-safe); ``worker_only``: count only
    reads outside the main thread (napari's own display reads happen on the main thread)."""

    def __init__(self, worker_only: bool = False) -> None:
        self.pixels = 0
        self.worker_only = worker_only
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.worker_only and threading.current_thread() is threading.main_thread():
            return
        with self._lock:
            self.pixels += n


def lazy_image(step: int = 1, reads: Reads | None = None):
    """The test image at every ``step``-th pixel (a pyramid level), as a dask array whose
    blocks are computed on demand, each counted in ``reads``."""
    side = SIDE // step
    chunk = min(CHUNK, side)

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        yy, xx = np.mgrid[r0:r1, c0:c1] * step
        out = (300 + (yy * 7919 + xx * 104729) % 900).astype(np.uint16)
        for cy, cx, r in DISCS:
            out[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 20000
        if reads is not None:
            reads.add(out.size)
        return out

    chunks = tuple(tuple(min(chunk, side - s) for s in range(0, side, chunk)) for _ in range(2))
    return da.map_blocks(block, dtype=np.uint16, chunks=chunks)


def window_cover(window: int = 1024) -> int:
    """Pixels of the chunks a window of ``window`` px can touch (at worst)."""
    n = -(-window // CHUNK) + 1
    return n * n * CHUNK * CHUNK


def test_worktree_module_is_under_test():
    assert napari_pasam.__file__.startswith(str(__import__("pathlib").Path(__file__).parents[1]))


def test_dask_pyramid_is_segmented_tile_by_tile_without_reading_the_image(
    make_napari_viewer, qtbot, tiny_checkpoint
):
    from pasam_plugins.segment import Segmenter

    viewer = make_napari_viewer()
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.prefetch_check.setChecked(False)  # reads of one click only (prefetch: below)
    reads = Reads()
    pyramid = [lazy_image(1, reads), lazy_image(4), lazy_image(16)]
    layer = viewer.add_image(pyramid, multiscale=True, name="slide", contrast_limits=(0, 20000))
    n_errors = len(notification_manager.records)
    widget.start(layer)
    layers_ready(qtbot, widget)
    assert widget.layers.labels.data.shape == (SIDE, SIDE)
    assert reads.pixels == 0, "napari shows the coarse levels; annotating reads nothing yet"

    y, x = DISCS[0][:2]
    widget.set_point_polarity(True)
    widget.layers.points.add([y, x])
    wait_idle(qtbot, widget)
    assert errors_since(n_errors) == []
    assert widget.slot.segmenter.mode == "tiled"
    # one tile window (and at most a second one, when the mask reaches its inner edge):
    # a small multiple of a tile, never the 36 Mpx image
    assert 0 < reads.pixels <= 2 * window_cover(), reads.pixels
    assert reads.pixels < SIDE * SIDE / 4

    # the same as the core on the whole image in memory, with the same contrast sample
    mask = widget.current.mask
    assert mask.shape == (SIDE, SIDE)
    full = np.asarray(pyramid[0])
    seg = Segmenter(widget.predictor)
    seg.set_image(full, sample=np.asarray(pyramid[2]))
    ref = seg.segment(np.array([[x, y]], np.float32), np.array([1]))
    np.testing.assert_array_equal(mask, ref.mask)
    assert mask.any(), "this seed and click give a non-empty mask"
    rows, cols = np.nonzero(mask)
    window = widget.current.result.window
    assert window.y0 <= rows.min() and rows.max() < window.y0 + window.size
    assert window.x0 <= cols.min() and cols.max() < window.x0 + window.size

    label_id = widget.accept()
    np.testing.assert_array_equal(widget.layers.labels.data == label_id, mask)


def test_plain_dask_layer_reads_a_few_chunks_for_contrast_and_the_tile(
    make_napari_viewer, qtbot, tiny_checkpoint
):
    import dask

    viewer = make_napari_viewer()
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.prefetch_check.setChecked(False)
    reads = Reads(worker_only=True)
    with dask.config.set(scheduler="synchronous"):  # blocks run in the thread that reads
        layer = viewer.add_image(lazy_image(1, reads), name="plain", contrast_limits=(0, 20000))
        widget.start(layer)
        layers_ready(qtbot, widget)
        y, x = DISCS[1][:2]
        widget.layers.points.add([y, x])
        wait_idle(qtbot, widget)
    assert widget.current is not None and widget.current.mask.shape == (SIDE, SIDE)
    # the contrast sample (3 x 3 chunks) and one or two tile windows
    assert 0 < reads.pixels <= 9 * CHUNK * CHUNK + 2 * window_cover(), reads.pixels


def test_image_whose_annotation_layers_cannot_fit_is_refused(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
):
    viewer = make_napari_viewer()
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    # 100 slices of 20000 x 20000: 149 GiB of labels; napari shows the coarse level
    shape = (100, 20000, 20000)
    pyramid = [
        da.zeros((100, 20000 // s, 20000 // s), np.uint16, chunks=(1, 1000, 1000))
        for s in (1, 10, 100)
    ]
    layer = viewer.add_image(pyramid, multiscale=True, name="huge", contrast_limits=(0, 1))
    n = len(notification_manager.records)
    widget.start(layer)
    errors = errors_since(n)
    assert len(errors) == 1 and "GiB" in errors[0] and large.MAX_LAYER_ENV in errors[0], errors
    assert widget.layers is None and widget.image_layer is None
    assert not [la for la in viewer.layers if la.name.startswith("huge PA-SAM")]
    # the limit is the user's to raise: a single plane of the same size fits in 8 GiB
    monkeypatch.setenv(large.MAX_LAYER_ENV, "8")
    assert large.annotation_bytes(widget_geometry := _geometry(shape[1:])) < 8 << 30
    large.check_annotation_size(widget_geometry)
    monkeypatch.setenv(large.MAX_LAYER_ENV, "1")
    with pytest.raises(ValueError, match="GiB"):
        large.check_annotation_size(widget_geometry)


def _geometry(shape):
    from napari_pasam.planes import PlaneGeometry

    return PlaneGeometry(tuple(shape))


def test_tiles_in_view_are_prefetched_with_bounded_reads(
    make_napari_viewer, qtbot, tiny_checkpoint
):
    from napari_pasam.prefetch import PREFETCH_TILES

    viewer = make_napari_viewer(show=True)  # the view is known once the canvas draws
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    reads = Reads()
    pyramid = [lazy_image(1, reads), lazy_image(4), lazy_image(16)]
    layer = viewer.add_image(pyramid, multiscale=True, name="slide", contrast_limits=(0, 20000))
    widget.start(layer)
    layers_ready(qtbot, widget)
    y, x = DISCS[0][:2]
    viewer.camera.center = (y, x)
    viewer.camera.zoom = 0.3  # about 2000 px of the image in view
    qtbot.wait(200)
    widget.layers.points.add([y, x])
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.prefetch_run is not None, timeout=60_000)
    run = widget.prefetch_run
    qtbot.waitUntil(lambda: run.finished, timeout=180_000)
    assert run.error is None and 1 <= run.total <= PREFETCH_TILES
    assert run.encoded >= 1  # tiles beside the clicked one were embedded
    r0, r1, c0, c1 = widget._view_rect()
    assert r0 <= y <= r1 and c0 <= x <= c1 and r1 - r0 < SIDE / 2, (r0, r1, c0, c1)
    for item in run.items:  # every prefetched tile overlaps the view
        w = item.window
        assert w.y0 < r1 and w.y0 + w.size > r0 and w.x0 < c1 and w.x0 + w.size > c0
    # the clicked tile, the prefetched ones: a bounded number of windows, not the image
    # (each window reads the chunks it touches; overlapping windows read some chunks twice)
    assert reads.pixels <= (2 + run.total) * window_cover() and reads.pixels < SIDE * SIDE

    # a click on a prefetched tile does not run the encoder
    widget.prefetch_check.setChecked(False)
    other = next(it.window for it in run.items if it.window != widget.current.result.window)
    widget.clear_prompts()
    runs = widget.predictor.encoder_runs
    cy, cx = other.y0 + other.size / 2, other.x0 + other.size / 2
    widget.layers.points.add([cy, cx])
    wait_idle(qtbot, widget)
    assert widget.current is not None
    if widget.current.result.window == other:
        assert widget.predictor.encoder_runs == runs
