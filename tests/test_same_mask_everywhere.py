"""Issue 12: the same prompt on the same image gives the same mask in every front end, each
used as a user meets it (its defaults: the shipped model, its precision and encoder path):
`pasam predict`, the Label Studio backend's /predict and the napari dock. One positive click
alone (the prompt whose multimask rule used to differ between the adapters) and a box, on a
held-out EM section (ISBI 2012 section 25). Real viewer under Xvfb."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from fastapi.testclient import TestClient  # noqa: E402
from labelstudio_support import decode_brush, keypoint, predict_body, rectangle  # noqa: E402
from napari_support import click, dock, layers_ready, wait_idle  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from label_studio_backend.app import create_app  # noqa: E402
from label_studio_backend.config import Settings  # noqa: E402
from label_studio_backend.model import PASamBackend  # noqa: E402
from pasam_plugins.cli import app as pasam_cli  # noqa: E402
from pasam_plugins.registry import bundled_checkpoint  # noqa: E402

SECTION = 25
CLICK_XY = (150, 136)  # inside a cell (pixel x, y)
BOX = (97, 92, 211, 180)  # x0, y0, x1, y1 around another cell (the README's first command)


def _cli_mask(image_path, out, args) -> np.ndarray:
    r = CliRunner().invoke(pasam_cli, ["predict", str(image_path), *args, "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / f"{SECTION}_prediction.json").read_text())["untrained"] is False
    return np.asarray(PILImage.open(out / f"{SECTION}_mask.png")) > 0


def test_a_click_and_a_box_give_the_same_mask_in_cli_label_studio_and_napari(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, shared_data
):
    monkeypatch.delenv("PASAM_CHECKPOINT", raising=False)
    monkeypatch.delenv("PASAM_PRECISION", raising=False)
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "cache"))
    src = shared_data / "isbi2012-em" / "image" / f"{SECTION}.png"
    root = tmp_path / "ls-root"
    (root / "imgs").mkdir(parents=True)
    shutil.copy(src, root / "imgs" / f"{SECTION}.png")
    image = np.asarray(PILImage.open(src))
    h, w = image.shape
    x, y = CLICK_XY
    x0, y0, x1, y1 = BOX

    # 1. the CLI, no checkpoint given
    cli_click = _cli_mask(src, tmp_path / "cli-click", ["--point", f"{x},{y}"])
    cli_box = _cli_mask(src, tmp_path / "cli-box", ["--box", f"{x0},{y0},{x1},{y1}"])

    # 2. the Label Studio backend as `pasam serve` builds it without a checkpoint
    backend = PASamBackend.from_settings(
        Settings(checkpoint=bundled_checkpoint(), local_files_root=root)
    )
    client = TestClient(create_app(backend))
    url = f"/data/local-files/?d=imgs/{SECTION}.png"

    def ls_mask(context):
        r = client.post(
            "/predict", json=predict_body([{"id": 1, "data": {"image": url}}], context=context)
        )
        assert r.status_code == 200, r.text
        (region,) = r.json()["results"][0]["result"]
        return decode_brush(region)

    # Label Studio sends percent of the image; pixel centres: x_px = x% / 100 * w - 0.5
    ls_click = ls_mask([keypoint((x + 0.5) * 100 / w, (y + 0.5) * 100 / h, width=w, height=h)])
    ls_box = ls_mask(
        [
            rectangle(
                x0 * 100 / w,
                y0 * 100 / h,
                (x1 - x0) * 100 / w,
                (y1 - y0) * 100 / h,
                width=w,
                height=h,
            )
        ]
    )

    # 3. the napari dock with its default model
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name=f"em{SECTION}")
    widget = dock(viewer)
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.slot is not None, widget.task_panel.status_label.full_text()
    widget.start(layer)
    layers_ready(qtbot, widget)
    click(qtbot, widget, (y, x))
    napari_click = widget.current.mask.copy()
    widget.clear_prompts()  # Shift+C: the box starts a new object
    wait_idle(qtbot, widget)
    assert widget.current is None and len(widget.layers.points.data) == 0
    widget.layers.boxes.add_rectangles(np.array([[y0, x0], [y1, x1]]))
    wait_idle(qtbot, widget)
    napari_box = widget.current.mask.copy()

    for name, (a, b, c) in {
        "click": (cli_click, ls_click, napari_click),
        "box": (cli_box, ls_box, napari_box),
    }.items():
        assert a.shape == b.shape == c.shape == (h, w), name
        assert a.sum() > 500, name  # a real object, not an empty or stray mask
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: pasam predict vs /predict")
        np.testing.assert_array_equal(a, c, err_msg=f"{name}: pasam predict vs napari")
