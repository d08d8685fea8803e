"""Label Studio backend: tasks without prompts are pre-annotated with every object
(label_studio_backend.automatic), as polygons or brush masks chosen by the labeling config,
scored, uncertain tasks ranked first, with a bounded response size."""

import numpy as np
import pytest
from automatic_support import ComponentModel, disc
from fastapi.testclient import TestClient
from labelstudio_support import SAM_CONFIG, decode_brush, predict_body
from PIL import Image

from label_studio_backend.app import create_app
from label_studio_backend.automatic import AutomaticConfig
from label_studio_backend.images import ImageLoader
from label_studio_backend.model import PASamBackend
from pasam_plugins.export import ring_to_mask
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.testing import make_test_model

POLYGON_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image" strokeWidth="2">
    <Label value="Nucleus"/>
  </PolygonLabels>
</View>"""

BRUSH_ONLY_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Nucleus"/></BrushLabels>
</View>"""

DISCS = [(60, 60, 25), (200, 80, 18), (330, 220, 30), (120, 230, 22), (250, 150, 16)]


def _scene(bright: int) -> np.ndarray:
    """Discs on a dark background; the fake decoder's uncertainty is brightness / 255."""
    img = np.full((300, 400), 20, np.uint8)
    for cx, cy, r in DISCS:
        img[disc(300, 400, cx, cy, r)] = bright
    return img


@pytest.fixture()
def setup(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    urls = {}
    for name, img in {"dim.png": _scene(110), "bright.png": _scene(230)}.items():
        Image.fromarray(img).save(d / name)
        urls[name] = f"/data/local-files/?d=imgs/{name}"
    crowd = np.full((1024, 1024), 20, np.uint8)  # 256 nuclei-sized objects
    for k in range(256):
        cy, cx = divmod(k, 16)  # centred on every other point of a 32 x 32 grid
        crowd[disc(1024, 1024, 16 + 64 * cx, 16 + 64 * cy, 14)] = 120 + k % 100
    Image.fromarray(crowd).save(d / "crowd.png")
    urls["crowd.png"] = "/data/local-files/?d=imgs/crowd.png"
    predictor = PASamPredictor(make_test_model(seed=0), device="cpu")
    ComponentModel(predictor)
    backend = PASamBackend(predictor=predictor, loader=ImageLoader(local_files_root=tmp_path))
    backend.automatic = AutomaticConfig(points_per_side=16)
    return backend, TestClient(create_app(backend), raise_server_exceptions=False), urls


def _task(url, tid, **extra):
    return {"id": tid, "data": {"image": url}, **extra}


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_polygon_config_gets_every_object_as_a_scored_polygon(setup):
    backend, client, urls = setup
    assert (
        client.post("/setup", json={"project": "1.1", "schema": POLYGON_CONFIG}).status_code == 200
    )
    r = client.post(
        "/predict", json=predict_body([_task(urls["dim.png"], 1)], config=POLYGON_CONFIG)
    )
    assert r.status_code == 200, r.text
    (pred,) = r.json()["results"]
    regions = pred["result"]
    assert len(regions) == len(DISCS)
    truth = [disc(300, 400, cx, cy, rr) for cx, cy, rr in DISCS]
    for reg in regions:
        assert reg["type"] == "polygonlabels" and reg["from_name"] == "outline"
        assert reg["value"]["polygonlabels"] == ["Nucleus"] and reg["value"]["closed"]
        assert reg["score"] == pytest.approx(0.95)
        assert reg["meta"]["boundary_uncertainty"] == pytest.approx(110 / 255, abs=1e-3)
        pts = np.array(reg["value"]["points"]) / 100 * [400, 300]
        m = ring_to_mask(pts, 300, 400)
        assert max(_iou(m, t) for t in truth) > 0.9
    assert pred["score"] == pytest.approx(1 - 110 / 255, abs=1e-3)
    assert sorted(reg["meta"]["review_rank"] for reg in regions) == [1, 2, 3, 4, 5]
    assert regions[0]["meta"]["review_rank"] == 1 and regions[0]["meta"]["needs_review"]


def test_brush_config_gets_brush_masks_and_uncertain_tasks_rank_first(setup):
    backend, client, urls = setup
    tasks = [_task(urls["dim.png"], 1), _task(urls["bright.png"], 2)]
    for config in (SAM_CONFIG, BRUSH_ONLY_CONFIG):
        r = client.post("/predict", json=predict_body(tasks, config=config))
        assert r.status_code == 200, r.text
        dim, bright = r.json()["results"]
        for reg in dim["result"]:
            assert reg["type"] == "brushlabels"
            m = decode_brush(reg)
            assert max(_iou(m, disc(300, 400, cx, cy, rr)) for cx, cy, rr in DISCS) > 0.9
        assert len(dim["result"]) == len(bright["result"]) == len(DISCS)
        # sorting by prediction score (ascending) shows the more uncertain task first
        assert bright["score"] < dim["score"]


def test_annotated_tasks_and_the_off_switch_give_no_prediction(setup):
    """No prediction at all (not an empty one, which Label Studio would store under this
    model version and so skip the task once boxes are added: issue 14)."""
    backend, client, urls = setup
    annotated = _task(
        urls["dim.png"], 3, annotations=[{"id": 1, "result": [{"id": "x", "type": "brushlabels"}]}]
    )
    r = client.post("/predict", json=predict_body([annotated], config=POLYGON_CONFIG))
    assert r.json()["results"] == [[]]
    backend.automatic = AutomaticConfig(enabled=False)
    r = client.post(
        "/predict", json=predict_body([_task(urls["dim.png"], 4)], config=POLYGON_CONFIG)
    )
    assert r.json()["results"] == [[]]


def test_response_size_is_bounded_for_hundreds_of_objects(setup, capsys):
    """256 objects on a 1024x1024 image: the response size per object (printed) and the
    region cap."""
    backend, client, urls = setup
    backend.automatic = AutomaticConfig(points_per_side=32)
    sizes = {}
    for name, config in (("polygon", POLYGON_CONFIG), ("brush", BRUSH_ONLY_CONFIG)):
        r = client.post("/predict", json=predict_body([_task(urls["crowd.png"], 5)], config=config))
        assert r.status_code == 200, r.text
        n = len(r.json()["results"][0]["result"])
        assert n == 256
        sizes[name] = len(r.content)
    with capsys.disabled():
        print(
            f"\n256 objects, 1024x1024: polygons {sizes['polygon'] / 1024:.0f} KiB "
            f"({sizes['polygon'] / 256:.0f} B/object), brush RLE {sizes['brush'] / 1024:.0f} KiB "
            f"({sizes['brush'] / 256:.0f} B/object)"
        )
    assert sizes["polygon"] / 256 < 1200 and sizes["polygon"] < sizes["brush"]
    backend.automatic = AutomaticConfig(points_per_side=32, max_regions=100)
    r = client.post(
        "/predict", json=predict_body([_task(urls["crowd.png"], 5)], config=POLYGON_CONFIG)
    )
    assert len(r.json()["results"][0]["result"]) == 100
    assert len(r.content) < 0.45 * sizes["polygon"]  # 100 of 256 objects: ~39 % of the bytes
