"""Full-window screenshot of the PA-SAM annotator in use on an EM section.

Opens a real napari window (Qt ``xcb`` platform; under Xvfb when there is no display), docks
the annotator through the plugin manifest, loads a model, clicks two positive and one
negative point, and saves the whole window (dock widget, layer list, canvas with the mask,
the uncertainty map and the mined points) as a PNG.

    python benchmarks/napari_screenshot.py --out napari_annotator.png
    python benchmarks/napari_screenshot.py --checkpoint model.safetensors --section 5

Without ``--checkpoint`` it uses a `make-test-checkpoint` random-weight model (masks are
arbitrary, the layers and widgets are the real ones).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _display import DEFAULT_EM, ensure_display


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("napari_annotator.png"))
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--em-dir", type=Path, default=DEFAULT_EM)
    ap.add_argument("--section", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(1500, 950), metavar=("W", "H"))
    args = ap.parse_args()

    ensure_display()
    os.environ["QT_QPA_PLATFORM"] = "xcb"

    import numpy as np
    from PIL import Image as PILImage

    image_path = args.em_dir / "image" / f"{args.section}.png"
    if not image_path.is_file():
        sys.exit(f"EM section not found: {image_path}")
    section = np.asarray(PILImage.open(image_path))

    checkpoint = args.checkpoint
    tmp = None
    if checkpoint is None:
        from pasam_plugins.testing import make_test_checkpoint

        tmp = tempfile.TemporaryDirectory()
        checkpoint = make_test_checkpoint(Path(tmp.name) / "tiny.safetensors", seed=0)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="PA-SAM annotator")
    app = QApplication.instance()
    viewer.window.resize(*args.size)
    image = viewer.add_image(section, name=f"EM section {args.section}")
    _, widget = viewer.window.add_plugin_dock_widget("pasam-plugins", "PA-SAM Annotator")

    def wait(timeout: float = 300.0) -> None:
        t0 = time.time()
        while widget.busy:
            if time.time() - t0 > timeout:
                sys.exit("timed out waiting for the annotator")
            app.processEvents()
            time.sleep(0.02)
        for _ in range(5):
            app.processEvents()

    widget.checkpoint_edit.setText(str(checkpoint))
    widget.load_model()
    wait()
    if widget.predictor is None:
        sys.exit(f"model not loaded: {widget.status_label.text()}")
    widget.start(image)
    h, w = section.shape[:2]
    for (y, x), positive in (
        ((0.45 * h, 0.5 * w), True),
        ((0.6 * h, 0.4 * w), True),
        ((0.2 * h, 0.8 * w), False),
    ):
        widget.set_point_polarity(positive)
        widget.points_layer.add([y, x])
        wait()
    if widget.current is None:
        sys.exit("no prediction was shown")
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)

    shot = viewer.screenshot(canvas_only=False, flash=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(shot).save(args.out)
    rgb = shot[..., :3].astype(np.float32)
    print(
        f"saved {args.out} {shot.shape[1]}x{shot.shape[0]}: mean {rgb.mean():.1f}, "
        f"std {rgb.std():.1f}; object {int(widget.current.mask.sum())} px, "
        f"IoU {widget.current.iou:.3f}, uncertainty {widget.current.uncertainty:.3f}, "
        f"{len(widget.suggestions_layer.data)} mined points; "
        f"platform {app.platformName()}"
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
