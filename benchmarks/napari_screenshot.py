"""Full-window screenshot of the PA-SAM annotator in use, for the README.

Opens a real napari window (Qt ``xcb`` platform; under Xvfb when there is no display),
opens a shipped nuclei sample (File > Open Sample), docks the annotator through the plugin
manifest, loads a model, accepts a few nuclei and leaves one more as the current object, so
that the window shows the dock, the layer list, the labels, the current mask, the
uncertainty map and the suggested clicks. Clicks go to the deepest interior point of
nuclei of the sample's reference labels in ``../shared/data/dsb2018-nuclei/label`` (the
brightest pixels when those are absent).

    python benchmarks/napari_screenshot.py --out docs/napari_annotator.jpg
    python benchmarks/napari_screenshot.py --source /path/to/model.safetensors

``--source`` defaults to the shipped model (registry entry ``pasam_micro`` in
``model/weights``, the panel's default); when its file is missing it falls back to a
`make-test-checkpoint` random-weight model and says so (masks are then arbitrary; the
layers and widgets are the real ones).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _display import ROOT, ensure_display

NUCLEI_LABELS = ROOT.parent / "shared" / "data" / "dsb2018-nuclei" / "label"


def click_points(image, label_file: Path, n: int):
    """(y, x) of up to ``n`` nuclei: the deepest interior points of the largest labelled
    nuclei, or the brightest well-separated pixels without labels."""
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    points = []
    if label_file.is_file():
        labels = np.asarray(PILImage.open(label_file))
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        for i in ids[np.argsort(-counts)][:n]:
            m = np.pad(labels == i, 1).astype(np.uint8)
            dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)[1:-1, 1:-1]
            points.append(tuple(float(v) for v in np.unravel_index(np.argmax(dist), dist.shape)))
        return points
    img = image.astype(np.float32) if image.ndim == 2 else image.mean(-1)
    blur = cv2.GaussianBlur(img, (0, 0), 5)
    for _ in range(n):
        y, x = np.unravel_index(np.argmax(blur), blur.shape)
        points.append((float(y), float(x)))
        blur[max(0, y - 30) : y + 30, max(0, x - 30) : x + 30] = -np.inf
    return points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("napari_annotator.png"))
    ap.add_argument(
        "--source", default=None, help="checkpoint or registry:<name> (default: the shipped model)"
    )
    ap.add_argument("--sample", default="nuclei_fluorescence", help="napari sample key")
    ap.add_argument("--objects", type=int, default=4, help="accepted objects (+1 current)")
    ap.add_argument("--size", type=int, nargs=2, default=(1500, 950), metavar=("W", "H"))
    args = ap.parse_args()

    ensure_display()
    os.environ["QT_QPA_PLATFORM"] = "xcb"

    import numpy as np
    from PIL import Image as PILImage

    from napari_pasam._compat import avoid_triton_llvm_clash
    from napari_pasam._sample_data import NUCLEI

    avoid_triton_llvm_clash(force=True)
    source, tmp = args.source, None
    if source is None:
        from pasam_plugins.registry import DEFAULT_MODEL, get_entry

        shipped = get_entry(DEFAULT_MODEL).bundled_path
        if shipped is not None and shipped.is_file():
            source = f"registry:{DEFAULT_MODEL}"
        else:
            from pasam_plugins.testing import make_test_checkpoint

            tmp = tempfile.TemporaryDirectory()
            source = str(make_test_checkpoint(Path(tmp.name) / "tiny.safetensors", seed=0))
            print("the shipped model is missing: using random weights (arbitrary masks)")

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="PA-SAM annotator")
    app = QApplication.instance()
    viewer.window.resize(*args.size)
    layers = viewer.open_sample("pasam-plugins", args.sample)
    image = layers[0]
    _, widget = viewer.window.add_plugin_dock_widget("pasam-plugins", "PA-SAM Annotator")

    def wait(timeout: float = 600.0) -> None:
        t0 = time.time()
        while widget.busy:
            if time.time() - t0 > timeout:
                sys.exit("timed out waiting for the annotator")
            app.processEvents()
            time.sleep(0.02)
        for _ in range(5):
            app.processEvents()

    # through the model panel, so that the screenshot shows the source that was loaded
    panel = widget.model_panel
    index = panel.source_combo.findData(source)
    if index < 0:  # a checkpoint file
        index = panel.source_combo.findData("file")
        panel.checkpoint_edit.setText(source)
    panel.source_combo.setCurrentIndex(index)
    panel.load_button.click()
    wait()
    if widget.slot is None:
        sys.exit(f"model not loaded: {widget.task_panel.status_label.full_text()}")
    widget.start(image)
    while not all(la in viewer.layers for la in widget.layers.all()):
        app.processEvents()
    label_file = NUCLEI_LABELS / NUCLEI.get(args.sample, ("none",))[0].removeprefix("dsb2018_")
    points = click_points(np.asarray(image.data), label_file, args.objects + 1)
    for i, (y, x) in enumerate(points):
        widget.layers.points.add([y, x])
        wait()
        if i < len(points) - 1 and widget.current is not None:
            widget.accept()
    if widget.current is None:
        sys.exit("no prediction was shown")
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)

    shot = viewer.screenshot(canvas_only=False, flash=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(shot[..., :3]).save(args.out, quality=90)
    rgb = shot[..., :3].astype(np.float32)
    cur = widget.current
    print(
        f"saved {args.out} {shot.shape[1]}x{shot.shape[0]}: mean {rgb.mean():.1f}, std "
        f"{rgb.std():.1f}; model {widget.slot.info.summary()}; "
        f"{len(widget.layers.labels.features)} accepted, current: {cur.describe()}; "
        f"{len(widget.layers.suggestions.data)} suggested clicks; platform {app.platformName()}"
    )
    viewer.close()
    if tmp is not None:
        tmp.cleanup()
    if rgb.std() < 5.0:
        print("the screenshot is (nearly) uniform: rendering failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
