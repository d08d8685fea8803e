"""The ML backend's HTTP protocol with a test client: /health, /setup, /predict (interactive
and batch), /webhook, /metrics, basic auth, bad input and concurrency.

The model is a tiny random-weight PA-SAM (``make_test_checkpoint``); expected masks come from
a separate ``PASamPredictor`` on the same weights, called with the pixel coordinates the
Label Studio percentages stand for.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from labelstudio_support import (
    SAM_CONFIG,
    SINGLE_LABEL_CONFIG,
    decode_brush,
    keypoint,
    predict_body,
    rectangle,
    write_test_images,
)
from PIL import Image

from label_studio_backend.app import create_app
from label_studio_backend.automatic import AutomaticConfig
from label_studio_backend.config import Settings
from label_studio_backend.images import ImageLoader
from label_studio_backend.model import PASamBackend
from pasam_plugins.checkpoint import load_model
from pasam_plugins.metrics import uncertainty_band
from pasam_plugins.predictor import PASamPredictor


@pytest.fixture(scope="module")
def em(isbi_dir) -> np.ndarray:
    return np.asarray(Image.open(isbi_dir / "image" / "0.png"))


@pytest.fixture(scope="module")
def images(tmp_path_factory, em):
    root = tmp_path_factory.mktemp("ls-root")
    return root, write_test_images(root, em)


@pytest.fixture(scope="module")
def backend(tiny_checkpoint, images) -> PASamBackend:
    root, _ = images
    b = PASamBackend.from_settings(Settings(checkpoint=tiny_checkpoint, local_files_root=root))
    b.automatic = AutomaticConfig(points_per_side=4)  # tasks without prompts: a small grid
    return b


@pytest.fixture()
def client(backend) -> TestClient:
    return TestClient(create_app(backend), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, backend) -> PASamPredictor:
    """An independent predictor on the same weights, encoder path and precision."""
    return PASamPredictor(
        load_model(tiny_checkpoint), precision=backend.predictor.precision, fast_encoder=True
    )


def task(url: str, tid: int = 1, **extra) -> dict:
    return {"id": tid, "data": {"image": url}, **extra}


def only_result(resp) -> dict:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["results"]) == 1
    return body["results"][0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --------------------------------------------------------------------------- endpoints
def test_health_and_root(client, backend):
    for path in ("/health", "/"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json()["status"] == "UP"
        assert r.json()["model_version"] == backend.model_version


def test_setup_returns_the_model_version_used_by_predictions(client, images):
    _, urls = images
    r = client.post("/setup", json={"project": "3.1700000000", "schema": SAM_CONFIG,
                                    "hostname": "http://localhost:8080", "access_token": "x"})
    assert r.status_code == 200
    version = r.json()["model_version"]
    assert version.startswith("pasam-")
    pred = client.post("/predict", json=predict_body([task(urls["em.png"])],
                                                     context=[keypoint(40, 40)]))
    assert pred.json()["model_version"] == version
    assert only_result(pred)["model_version"] == version
    # stable: a second setup (LS calls it before every prediction run) gives the same version
    assert client.post("/setup", json={"project": "3.1", "schema": SAM_CONFIG}).json() == {
        "model_version": version
    }


def test_model_version_is_derived_from_the_weights(tiny_checkpoint, tmp_path, images):
    from pasam_plugins.testing import make_test_checkpoint

    root, _ = images
    other = make_test_checkpoint(tmp_path / "other.safetensors", seed=1)
    a = PASamBackend.from_settings(Settings(checkpoint=tiny_checkpoint, local_files_root=root))
    b = PASamBackend.from_settings(Settings(checkpoint=tiny_checkpoint, local_files_root=root))
    c = PASamBackend.from_settings(Settings(checkpoint=other, local_files_root=root))
    assert a.model_version == b.model_version != c.model_version


@pytest.mark.parametrize(
    "schema, needle",
    [
        ("<View><Image name='i' value='$x'/><KeyPointLabels name='k' toName='i'><Label value='a'/>"
         "</KeyPointLabels></View>", "BrushLabels"),
        ("<View><Text name='t' value='$x'/><BrushLabels name='b' toName='t'><Label value='a'/>"
         "</BrushLabels></View>", "Image"),
        ("<View><Image name='i' value='$x'/><Image name='j' value='$y'/><BrushLabels name='b' "
         "toName='j'><Label value='a'/></BrushLabels><KeyPoint name='k' toName='i'/></View>",
         "KeyPointLabels"),
        ("<View><Image name='i' value='$x'", "parse"),
    ],
)
def test_config_without_the_needed_tags_is_a_clear_error(client, images, schema, needle):
    _, urls = images
    r = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert r.status_code == 422
    assert needle in r.json()["error"]
    r = client.post("/predict", json=predict_body([task(urls["em.png"])], context=[keypoint(5, 5)],
                                                  config=schema))
    assert r.status_code == 422
    assert needle in r.json()["error"]


# --------------------------------------------------------------------------- interactive
@pytest.mark.parametrize("name", ["wide.png", "tall.png"])
def test_interactive_keypoint_matches_the_predictor_at_the_clicked_pixel(client, images, reference, name):
    _, urls = images
    # original_width/height deliberately wrong: percentages are relative to the real image
    ctx = [keypoint(30, 60, width=999, height=111)]
    res = only_result(client.post("/predict", json=predict_body([task(urls[name])], context=ctx)))
    (region,) = res["result"]
    img = np.asarray(Image.open(images[0] / "imgs" / name))
    h, w = img.shape[:2]
    assert (region["original_width"], region["original_height"]) == (w, h)
    assert region["type"] == "brushlabels" and region["from_name"] == "tag"
    assert region["to_name"] == "image" and region["value"]["brushlabels"] == ["Cell"]
    assert region["value"]["format"] == "rle"
    mask = decode_brush(region)
    assert mask.shape == (h, w)

    reference.set_image(img)
    px, py = 0.30 * w - 0.5, 0.60 * h - 0.5
    ref = reference.predict(point_coords=np.array([[px, py]]), point_labels=np.array([1]),
                            multimask_output=True)
    assert iou(mask, ref.masks[0]) > 0.99
    assert region["score"] == pytest.approx(float(ref.scores[0]), abs=1e-4)
    # the check can fail: the mask for the transposed click is different
    wrong = reference.predict(point_coords=np.array([[py * w / h, px * h / w]]),
                              point_labels=np.array([1]), multimask_output=True)
    assert iou(wrong.masks[0], ref.masks[0]) < 0.99

    # region meta: mean uncertainty inside the mask; task score: 1 - boundary-band uncertainty
    unc = ref.uncertainty
    assert region["meta"]["mean_uncertainty"] == pytest.approx(float(unc[ref.masks[0]].mean()), abs=1e-3)
    band = uncertainty_band(ref.masks[0])
    assert res["score"] == pytest.approx(1.0 - float(unc[band].mean()), abs=1e-3)


def test_interactive_box_plus_positive_and_negative_keypoints(client, images, reference):
    _, urls = images
    ctx = [
        rectangle(10, 20, 50, 40, label="Membrane"),
        keypoint(30, 35, label="Membrane", rid="p1"),
        keypoint(45, 50, label="Membrane", positive=False, rid="n1"),
        keypoint(20, 30, label="Membrane", rid="p2"),
    ]
    res = only_result(client.post("/predict", json=predict_body([task(urls["wide.png"])], context=ctx)))
    (region,) = res["result"]
    assert region["value"]["brushlabels"] == ["Membrane"]
    img = np.asarray(Image.open(images[0] / "imgs" / "wide.png"))
    h, w = img.shape
    reference.set_image(img)
    ref = reference.predict(
        point_coords=np.array([[0.30 * w - 0.5, 0.35 * h - 0.5], [0.45 * w - 0.5, 0.50 * h - 0.5],
                               [0.20 * w - 0.5, 0.30 * h - 0.5]]),
        point_labels=np.array([1, 0, 1]),
        box=np.array([0.10 * w, 0.20 * h, 0.60 * w, 0.60 * h]),
        multimask_output=False,
    )
    assert iou(decode_brush(region), ref.masks[0]) > 0.99
    assert sorted(region["meta"]["prompt_region_ids"]) == ["box", "n1", "p1", "p2"]


def test_alt_click_negative_changes_the_mask(client, images):
    _, urls = images
    pos = [keypoint(50, 50, rid="a")]
    both = pos + [keypoint(55, 52, positive=False, rid="b")]
    m1 = decode_brush(only_result(client.post("/predict", json=predict_body([task(urls["em.png"])], context=pos)))["result"][0])
    m2 = decode_brush(only_result(client.post("/predict", json=predict_body([task(urls["em.png"])], context=both)))["result"][0])
    assert not np.array_equal(m1, m2)


def test_labels_map_to_the_only_brush_label(client, images):
    _, urls = images
    t = {"id": 5, "data": {"url": urls["em.png"]}}
    ctx = [dict(keypoint(40, 40, label="Here", from_name="click"), to_name="img")]
    res = only_result(client.post("/predict", json=predict_body([t], context=ctx, config=SINGLE_LABEL_CONFIG)))
    region = res["result"][0]
    assert region["from_name"] == "mask" and region["to_name"] == "img"
    assert region["value"]["brushlabels"] == ["Object"]


def test_label_without_brush_counterpart_is_rejected(client, images):
    _, urls = images
    cfg = SAM_CONFIG.replace('<Label value="Membrane" background="#0000FF"/>', '<Label value="Other"/>')
    r = client.post("/predict", json=predict_body([task(urls["em.png"])], context=[keypoint(40, 40, label="Membrane")], config=cfg))
    assert r.status_code == 422
    assert "Membrane" in r.json()["error"] and "BrushLabels" in r.json()["error"]


def test_rotated_rectangle_uses_its_bounding_box(client, images, reference):
    _, urls = images
    ctx = [rectangle(30, 20, 20, 10, rotation=90)]
    region = only_result(client.post("/predict", json=predict_body([task(urls["em.png"])], context=ctx)))["result"][0]
    reference.set_image(np.asarray(Image.open(images[0] / "imgs" / "em.png")))
    # 90 deg clockwise around (x, y): the box spans x - h .. x and y .. y + w (in pixels)
    s = 512 / 100
    ref = reference.predict(box=np.array([20 * s, 20 * s, 30 * s, 40 * s]), multimask_output=False)
    assert iou(decode_brush(region), ref.masks[0]) > 0.99


# --------------------------------------------------------------------------- batch
def test_batch_turns_every_box_and_keypoint_into_a_mask(client, backend, images, reference):
    _, urls = images
    annotated = task(urls["wide.png"], 11, annotations=[{
        "id": 1, "was_cancelled": False,
        "result": [rectangle(5, 10, 30, 40, rid="r1"), rectangle(50, 40, 30, 50, rid="r2", label="Membrane"),
                   {"id": "c", "from_name": "other", "type": "choices", "value": {"choices": ["x"]}}],
    }], predictions=[{"id": 3, "result": [rectangle(5, 10, 30, 40, rid="dup"), keypoint(70, 20, rid="k1")]}])
    cancelled = task(urls["tall.png"], 12, annotations=[{"id": 2, "was_cancelled": True,
                                                          "result": [rectangle(1, 1, 5, 5)]}])
    empty = task(urls["em.png"], 13)
    r = client.post("/predict", json=predict_body([annotated, cancelled, empty]))
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert len(out) == 3
    first, second, third = out
    # r1 and its duplicate from the predictions count once: r1, r2, k1
    assert len(first["result"]) == 3
    # no prompts: no prediction at all (Label Studio stores nothing, so a later run with
    # boxes predicts these tasks)
    assert second == [] and third == []
    assert "score" in first and 0.0 <= first["score"] <= 1.0
    img = np.asarray(Image.open(images[0] / "imgs" / "wide.png"))
    h, w = img.shape
    reference.set_image(img)
    by_id = {reg["meta"]["prompt_region_ids"][0]: reg for reg in first["result"]}
    assert set(by_id) == {"r1", "r2", "k1"}
    assert by_id["r2"]["value"]["brushlabels"] == ["Membrane"]
    for rid, box in {"r1": (5, 10, 35, 50), "r2": (50, 40, 80, 90)}.items():
        ref = reference.predict(box=np.array([box[0] * w / 100, box[1] * h / 100, box[2] * w / 100, box[3] * h / 100]),
                                multimask_output=False)
        assert iou(decode_brush(by_id[rid]), ref.masks[0]) > 0.99
    ref = reference.predict(point_coords=np.array([[0.7 * w - 0.5, 0.2 * h - 0.5]]), point_labels=np.array([1]),
                            multimask_output=True)
    assert iou(decode_brush(by_id["k1"]), ref.masks[0]) > 0.99


def test_batch_second_pass_and_clicks_skip_the_encoder(tiny_checkpoint, images):
    root, urls = images
    backend = PASamBackend.from_settings(Settings(checkpoint=tiny_checkpoint, local_files_root=root))
    client = TestClient(create_app(backend))
    tasks = [task(urls[n], i, annotations=[{"id": i, "result": [rectangle(10, 10, 40, 40)]}])
             for i, n in enumerate(["wide.png", "tall.png"], start=1)]
    assert client.post("/predict", json=predict_body(tasks)).status_code == 200
    m1 = client.get("/metrics").json()
    assert m1["encoder_runs"] == 2  # each image embedded once
    assert client.post("/predict", json=predict_body(tasks)).status_code == 200
    client.post("/predict", json=predict_body([tasks[1]], context=[keypoint(50, 50)]))
    m2 = client.get("/metrics").json()
    assert m2["encoder_runs"] == 2
    assert m2["embedding_cache"]["hits"] >= m1["embedding_cache"]["hits"] + 2
    assert m2["batch_requests"] == 2 and m2["interactive_requests"] == 1


def test_disk_cache_survives_a_restart(tiny_checkpoint, images, tmp_path):
    root, urls = images
    settings = Settings(checkpoint=tiny_checkpoint, local_files_root=root, cache_dir=tmp_path / "emb")
    body = predict_body([task(urls["em.png"], 1, annotations=[{"id": 1, "result": [rectangle(10, 10, 40, 40)]}])])
    first = PASamBackend.from_settings(settings)
    a = first.predict(body)
    assert first.predictor.encoder_runs == 1
    second = PASamBackend.from_settings(settings)
    b = second.predict(body)
    assert second.predictor.encoder_runs == 0
    assert list((tmp_path / "emb" / "embeddings").iterdir())  # next to checkpoint downloads
    assert a["results"][0]["result"][0]["value"]["rle"] == b["results"][0]["result"][0]["value"]["rle"]
    # the HTTP route's bytes (RLE arrays written by orjson) are the same answer as JSON
    sent = json.loads(second.predict_json(body))
    for region in (*sent["results"][0]["result"], *b["results"][0]["result"]):
        region.pop("id")  # a fresh id per answer
    assert sent == b


def test_batch_uses_one_decoder_call_for_several_regions(backend, images, monkeypatch):
    _, urls = images
    calls = []
    original = backend.predictor.predict_torch

    def spy(*args, **kwargs):
        calls.append(args[2].shape[0] if args[2] is not None else args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(backend.predictor, "predict_torch", spy)
    boxes = [rectangle(5 + 10 * i, 5 + 8 * i, 10, 10, rid=f"b{i}") for i in range(5)]
    res = backend.predict(predict_body([task(urls["em.png"], annotations=[{"id": 1, "result": boxes}])]))
    assert len(res["results"][0]["result"]) == 5
    assert calls == [5]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"label_config": "<View/>"}', 400, "tasks"),
        (b'{"tasks": [], "label_config": 5}', 400, "label_config"),
        (b'{"tasks": [1], "label_config": "x"}', 422, "parse"),
    ],
)
def test_malformed_requests_are_4xx_with_a_message(client, body, status, needle):
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["error"]
    # and the server keeps serving
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "region, needle",
    [
        (dict(keypoint(10, 10), from_name="nope"), "unknown from_name"),
        (keypoint(120, 10), "outside 0..100"),
        (keypoint(-5, 10), "outside 0..100"),
        (rectangle(80, 10, 30, 10), "outside 0..100"),
        (dict(keypoint(10, 10), value={"y": 3}), "value.x"),
        (dict(keypoint(10, 10), value={"x": "a", "y": 3}), "value.x"),
        (dict(keypoint(10, 10), value=None), "value"),
        ("a string", "JSON object"),
    ],
)
def test_bad_regions_are_422(client, images, region, needle):
    _, urls = images
    r = client.post("/predict", json=predict_body([task(urls["em.png"])], context=[region]))
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]


def test_bad_regions_in_batch_annotations_are_422(client, images):
    _, urls = images
    t = task(urls["em.png"], annotations=[{"id": 1, "result": [rectangle(10, 10, 95, 10)]}])
    r = client.post("/predict", json=predict_body([t]))
    assert r.status_code == 422 and "task 1" in r.json()["error"]


@pytest.mark.parametrize(
    "url, status",
    [
        ("/data/local-files/?d=imgs/nope.png", 404),
        ("/data/local-files/?d=imgs/corrupt.png", 422),
        ("/data/local-files/?d=../../etc/passwd", 404),  # resolved inside the root, like LS
        ("http://169.254.169.254/latest/meta-data/", 403),
        ("file:///etc/passwd", 403),
        (12, 400),
    ],
)
def test_unusable_images_are_4xx(client, url, status):
    r = client.post("/predict", json=predict_body([task(url)], context=[keypoint(10, 10)]))
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert client.get("/health").status_code == 200


def test_missing_image_field_is_400(client):
    r = client.post("/predict", json=predict_body([{"id": 1, "data": {"img": "x"}}], context=[keypoint(1, 1)]))
    assert r.status_code == 400 and "image" in r.json()["error"]


def test_oversized_image_is_413(backend, images):
    root, urls = images
    small = PASamBackend(predictor=backend.predictor, model_version="v",
                         loader=ImageLoader(local_files_root=root, max_pixels=200 * 200))
    r = TestClient(create_app(small)).post("/predict", json=predict_body([task(urls["em.png"])], context=[keypoint(10, 10)]))
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_oversized_request_body_is_413(backend):
    c = TestClient(create_app(backend, max_request_bytes=1000))
    r = c.post("/predict", content=b'{"tasks": [' + b'{"id": 1},' * 200 + b'{}]}',
               headers={"content-type": "application/json"})
    assert r.status_code == 413


# --------------------------------------------------------------------------- auth, webhook
def test_basic_auth(backend):
    c = TestClient(create_app(backend, basic_auth=("ls", "s3cret")))
    assert c.get("/health").status_code == 401
    assert c.get("/health", auth=("ls", "wrong")).status_code == 401
    assert c.post("/setup", json={"schema": SAM_CONFIG}).status_code == 401
    assert c.get("/health", auth=("ls", "s3cret")).status_code == 200
    assert c.post("/setup", json={"schema": SAM_CONFIG}, auth=("ls", "s3cret")).status_code == 200
    assert c.get("/health", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_webhook_events_and_training_hook(backend):
    c = TestClient(create_app(backend))
    project = {"id": 1, "label_config": SAM_CONFIG}
    r = c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": 1}})
    assert r.status_code == 201 and r.json()["status"] == "ok"
    # the default trainer fine-tunes on the project's annotations, fetched from Label Studio:
    # without LABEL_STUDIO_URL it cannot, and says so at once (Label Studio marks the model
    # as failed and keeps the message)
    r = c.post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 422 and "LABEL_STUDIO_URL is not set" in r.json()["error"]
    assert c.get("/health").json()["training"]["status"] == "idle"
    r = c.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project})
    assert r.status_code == 200 and r.json()["status"] == "Unknown event"
    assert c.post("/webhook", json={"project": project}).status_code == 400
    assert c.post("/webhook", content=b"{", headers={"content-type": "application/json"}).status_code == 400

    class Hook:
        """A custom trainer: label-studio-ml's fit(event, data)."""

        def __init__(self):
            self.seen = []

        def fit(self, event, data):
            self.seen.append((event, data["project"]["id"], data.get("tasks")))
            return {"status": "training", "job": "42"}

    hook = Hook()
    trained = PASamBackend(predictor=backend.predictor, loader=backend.loader, model_version="v",
                           trainer=hook)
    tc = TestClient(create_app(trained))
    r = tc.post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 201 and r.json() == {"status": "training", "job": "42"}
    r = tc.post("/webhook", json={"action": "ANNOTATION_UPDATED", "project": project})
    assert r.status_code == 201
    # the legacy /train arrives at the same entry, with its tasks
    r = tc.post("/train", json={"annotations": [{"id": 3}], "project": "1.1700000000"})
    assert r.status_code == 201
    assert hook.seen == [("START_TRAINING", 1, None), ("ANNOTATION_UPDATED", 1, None),
                         ("START_TRAINING", 1, [{"id": 3}])]
    # without a trainer: acknowledged, nothing happens
    bare = TestClient(create_app(PASamBackend(predictor=backend.predictor, loader=backend.loader)))
    r = bare.post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 201 and r.json()["status"] == "no trainer configured"
    assert "training" not in bare.get("/health").json()


def test_metrics_count_requests(client):
    before = client.get("/metrics").json()
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    after = client.get("/metrics").json()
    assert after["errors"] == before["errors"] + 1
    assert {"encoder_runs", "embedding_cache", "model_version", "predict_requests"} <= set(after)


def test_precision_setting_reaches_the_predictor_and_metrics(tiny_checkpoint, images, monkeypatch):
    monkeypatch.setenv("PASAM_PRECISION", "float32")
    monkeypatch.setenv("PASAM_COMPILE", "no")
    settings = Settings.from_env(checkpoint=tiny_checkpoint, local_files_root=images[0])
    assert settings.precision == "float32" and settings.compile_encoder is False
    forced = PASamBackend.from_settings(settings)
    assert forced.predictor.precision == "float32" and forced.predictor.fast_encoder
    metrics = TestClient(create_app(forced)).get("/metrics").json()
    assert metrics["encoder"] == {"precision": "float32", "fast": True, "compile": "off"}
    assert Settings(checkpoint=tiny_checkpoint).precision == "auto"  # the default
    monkeypatch.setenv("PASAM_PRECISION", "half")
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        Settings.from_env()
    monkeypatch.setenv("PASAM_PRECISION", "BF16")
    assert Settings.from_env().precision == "bf16"
    monkeypatch.setenv("PASAM_COMPILE", "maybe")
    with pytest.raises(ValueError, match="PASAM_COMPILE"):
        Settings.from_env()


# --------------------------------------------------------------------------- load
def test_eight_concurrent_interactive_requests(client, images):
    _, urls = images
    names = ["em.png", "wide.png", "tall.png", "rgba.png"]
    distinct = [predict_body([task(urls[names[i]], i)], context=[keypoint(20 + 9 * i, 30 + 7 * i)])
                for i in range(4)]
    bodies = distinct + distinct[::-1]
    expected = [client.post("/predict", json=b).json()["results"][0]["result"][0]["value"]["rle"] for b in distinct]
    expected = expected + expected[::-1]
    barrier = threading.Barrier(8)

    def call(b):
        barrier.wait()
        return client.post("/predict", json=b)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, bodies))
    assert [r.status_code for r in responses] == [200] * 8
    got = [r.json()["results"][0]["result"][0]["value"]["rle"] for r in responses]
    assert got == expected


# --------------------------------------------------------------------------- plain SAM, CLI
def test_plain_sam_checkpoint_scores_tasks_by_predicted_iou(tmp_path, images):
    from pasam_plugins.testing import make_test_checkpoint

    root, urls = images
    ckpt = make_test_checkpoint(tmp_path / "sam.safetensors", seed=0, adapter=False)
    backend = PASamBackend.from_settings(Settings(checkpoint=ckpt, local_files_root=root))
    res = backend.predict(predict_body([task(urls["em.png"])], context=[keypoint(50, 50)]))["results"][0]
    (region,) = res["result"]
    assert "mean_uncertainty" not in region["meta"]
    assert res["score"] == pytest.approx(region["score"], abs=1e-5)


def test_serve_without_a_usable_checkpoint_is_a_clear_cli_error(tmp_path, monkeypatch, caplog):
    """No checkpoint: the shipped default model is served (as by every tool); an unusable
    one is a one-line error with exit status 2."""
    import logging

    import typer
    import uvicorn
    from typer.testing import CliRunner

    from label_studio_backend.cli import serve

    monkeypatch.delenv("PASAM_CHECKPOINT", raising=False)
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append((app, kw)))
    cli = typer.Typer()
    cli.command()(serve)
    runner = CliRunner()
    with caplog.at_level(logging.INFO, logger="label_studio_backend"):
        r = runner.invoke(cli, [])
    assert r.exit_code == 0, r.output
    assert len(served) == 1 and served[0][1]["host"] == "127.0.0.1"
    assert "serving the shipped model pasam_micro" in caplog.text
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(cli, ["--checkpoint", str(bad)])
    assert r.exit_code == 2 and "cannot load the model" in r.output
    r = runner.invoke(cli, ["--checkpoint", str(tmp_path / "missing.pth")])
    assert r.exit_code == 2 and "not found" in r.output


def test_health_and_setup_answer_fast_while_the_model_is_busy(backend):
    """Label Studio gives /health 1 s: a long batch holding the model must not block it."""
    import time

    c = TestClient(create_app(backend))
    with backend.lock:  # as during a long /predict
        for _ in range(3):
            t0 = time.perf_counter()
            assert c.get("/health").status_code == 200
            assert c.post("/setup", json={"project": "1.1", "schema": SAM_CONFIG}).status_code == 200
            assert c.get("/metrics").status_code == 200
            assert time.perf_counter() - t0 < 0.5


def test_task_score_weights_boundary_pixels_and_penalizes_empty_masks():
    from label_studio_backend.model import RegionResult, task_score

    def region(band_sum, band_n, area, mean_u=0.5, score=0.9):
        return RegionResult("Cell", [], score, mean_u, band_sum, band_n, area, [])

    # 100 band pixels at mean 0.2 and 300 at mean 0.6 -> pixel-weighted mean 0.5
    assert task_score([region(20.0, 100, 50), region(180.0, 300, 80)]) == pytest.approx(0.5)
    # an empty mask counts as one fully uncertain object
    assert task_score([region(20.0, 100, 50), region(0.0, 0, 0)]) == pytest.approx(1 - (0.2 + 1) / 2)
    assert task_score([region(0.0, 0, 0)]) == 0.0
    # without uncertainty (plain SAM): mean predicted IoU
    assert task_score([region(0, 0, 5, None, 0.4), region(0, 0, 5, None, 0.8)]) == pytest.approx(0.6)


def test_batch_tasks_without_prompts_are_not_downloaded(backend):
    """An annotated task without boxes or keypoints gets no prediction even if its image
    could not be fetched: nothing is downloaded for it (tasks without any annotation are
    pre-annotated automatically, tests/test_labelstudio_automatic.py)."""
    t = task("/data/local-files/?d=imgs/does-not-exist.png", 9,
             annotations=[{"id": 1, "result": [{"id": "c", "from_name": "tag", "type": "brushlabels",
                                                "value": {"format": "rle", "rle": [0]}}]}])
    before = backend.loader.local_reads
    res = backend.predict(predict_body([t]))
    assert res["results"] == [[]]
    assert backend.loader.local_reads == before
