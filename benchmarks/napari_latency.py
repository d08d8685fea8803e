"""Click-to-layers latency of the napari annotator vs the bare predictor call.

Setup: a ViT-B-sized PA-SAM with random weights (``build_pasam("vit_b")``, no checkpoint,
loaded through the widget (``random:vit_b``)), a 1024x1024 image (2x2 tiled EM sections) whose
embedding is cached before timing. Each trial times, alternately (so drift hits both alike):

- ``predictor``: ``PASamPredictor.predict`` with one positive point (what any client pays);
- ``click``: adding that point to the prompt Points layer (what napari's add-mode click does)
  until the handler returns, i.e. the prediction ran and the current-object, uncertainty and
  suggestion layers hold the new data;
- ``click+draw``: the same followed by one Qt event-loop pass that repaints the canvas.

Prints the median times and the ratio click / predictor (target <= 1.5).

    python benchmarks/napari_latency.py --trials 15
"""

import argparse
import os
import sys
import time
from pathlib import Path

from _display import DEFAULT_EM, ensure_display


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument("--em-dir", type=Path, default=DEFAULT_EM)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="encoder: auto, float32 or bf16")
    args = ap.parse_args()

    ensure_display()
    os.environ["QT_QPA_PLATFORM"] = "xcb"

    import numpy as np
    import torch  # before the GL context exists (see napari_pasam._compat)
    from PIL import Image as PILImage

    tiles = [np.asarray(PILImage.open(args.em_dir / "image" / f"{i}.png")) for i in range(4)]
    image = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
    assert image.shape == (1024, 1024), image.shape

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="PA-SAM latency")
    app = QApplication.instance()
    layer = viewer.add_image(image, name="EM 1024")
    _, widget = viewer.window.add_plugin_dock_widget("pasam-plugins", "PA-SAM Annotator")

    def wait() -> None:
        while widget.busy:
            app.processEvents()
            time.sleep(0.01)
        app.processEvents()

    t0 = time.perf_counter()
    widget.precision_combo.setCurrentText(args.precision)
    widget.load_model(f"random:{args.variant}", args.device)
    wait()
    if widget.predictor is None:
        sys.exit(f"model not loaded: {widget.status_label.text()}")
    t_load = time.perf_counter() - t0
    widget.start(layer)
    t0 = time.perf_counter()
    widget.points_layer.add([512.0, 512.0])  # first click: embeds the image (worker), caches it
    wait()
    t_embed = time.perf_counter() - t0
    assert widget.current is not None
    predictor = widget.predictor

    rng = np.random.default_rng(0)
    bare, click, click_draw = [], [], []
    for i in range(args.trials):
        y, x = rng.uniform(100, 924, 2)
        pts, lab = np.array([[x, y]], np.float32), np.array([1])
        widget.clear_prompts()
        app.processEvents()
        order = ("bare", "click") if i % 2 == 0 else ("click", "bare")
        for what in order:
            if what == "bare":
                s = time.perf_counter()
                predictor.predict(point_coords=pts, point_labels=lab, multimask_output=False)
                bare.append(time.perf_counter() - s)
            else:
                s = time.perf_counter()
                widget.points_layer.add([y, x])
                t_layers = time.perf_counter() - s
                app.processEvents()
                t_drawn = time.perf_counter() - s
                assert not widget.busy and widget.current is not None
                assert np.array_equal(widget.current_layer.data > 0, widget.current.mask)
                click.append(t_layers)
                click_draw.append(t_drawn)
    med = {
        k: float(np.median(v)) for k, v in (("bare", bare), ("click", click), ("draw", click_draw))
    }
    ratio = med["click"] / med["bare"]
    print(
        f"model {args.variant} (random weights) on {predictor.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, encoder {predictor.precision}; load "
        f"{t_load:.1f} s, first click with embedding "
        f"{t_embed:.1f} s; {args.trials} trials"
    )
    print(f"bare predictor.predict : {1000 * med['bare']:8.1f} ms (median)")
    print(f"click -> updated layers: {1000 * med['click']:8.1f} ms (median)")
    print(f"click -> layers + draw : {1000 * med['draw']:8.1f} ms (median)")
    print(f"ratio click/predictor  : {ratio:.3f} (target <= 1.5)")
    print(f"ratio with redraw      : {med['draw'] / med['bare']:.3f}")
    viewer.close()
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
