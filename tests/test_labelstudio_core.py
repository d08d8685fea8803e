"""The backend segments through the core (pasam_plugins.segment.Segmenter): the same prompts
give the same masks and scores as the core called directly, for a whole-image model and for
a model used zoomed in (as this project's small models); empty masks are no regions; and
``pasam serve`` says at start-up what is missing."""

import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from labelstudio_support import (
    decode_brush,
    keypoint,
    predict_body,
    rectangle,
    write_test_images,
    zoomed_test_checkpoint,
)
from PIL import Image

from label_studio_backend.app import create_app
from label_studio_backend.config import Settings
from label_studio_backend.model import PASamBackend
from pasam_plugins.checkpoint import load_model
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import Segmenter


@pytest.fixture(scope="module")
def images(tmp_path_factory, em_section):
    root = tmp_path_factory.mktemp("ls-root")
    return root, write_test_images(root, em_section)


@pytest.fixture(scope="module", params=["whole-image", "zoomed"])
def model_file(request, tmp_path_factory, tiny_checkpoint):
    if request.param == "whole-image":
        return tiny_checkpoint
    return zoomed_test_checkpoint(tmp_path_factory.mktemp("zoomed") / "zoomed.safetensors")


@pytest.fixture(scope="module")
def served(model_file, images):
    root, _ = images
    backend = PASamBackend.from_settings(Settings(checkpoint=model_file, local_files_root=root))
    return backend, TestClient(create_app(backend))


def pixel_point(x: float, y: float, w: int, h: int) -> list[float]:
    return [x / 100 * w - 0.5, y / 100 * h - 0.5]


def pixel_box(x: float, y: float, bw: float, bh: float, w: int, h: int) -> list[float]:
    return [x / 100 * w, y / 100 * h, (x + bw) / 100 * w, (y + bh) / 100 * h]


def test_interactive_masks_are_the_cores(served, model_file, images):
    backend, client = served
    root, urls = images
    img = np.asarray(Image.open(root / "imgs" / "wide.png"))
    h, w = img.shape
    # the backend's encoder settings (fast path, precision auto), a cache of its own
    core = Segmenter(
        PASamPredictor(load_model(model_file), **{**backend.predictor.settings(), "cache": None})
    )
    assert (core.zoom is not None) == (model_file.name == "zoomed.safetensors")
    core.set_image(img)
    cases = [
        # one positive click: the core's multimask rule picks among 3 masks
        ([keypoint(30, 60)], dict(points=[pixel_point(30, 60, w, h)], labels=[1])),
        # box + positive and negative clicks
        (
            [
                rectangle(10, 20, 50, 40),
                keypoint(30, 35, rid="p"),
                keypoint(45, 50, positive=False, rid="n"),
            ],
            dict(
                points=[pixel_point(30, 35, w, h), pixel_point(45, 50, w, h)],
                labels=[1, 0],
                box=pixel_box(10, 20, 50, 40, w, h),
            ),
        ),
    ]
    for context, prompts in cases:
        r = client.post(
            "/predict",
            json=predict_body([{"id": 1, "data": {"image": urls["wide.png"]}}], context=context),
        )
        assert r.status_code == 200, r.text
        (region,) = r.json()["results"][0]["result"]
        ref = core.segment(**prompts)
        np.testing.assert_array_equal(decode_brush(region), ref.mask)
        assert region["score"] == pytest.approx(ref.score, abs=1e-6)
        if ref.mean_uncertainty is not None:
            assert region["meta"]["mean_uncertainty"] == pytest.approx(
                ref.mean_uncertainty, abs=1e-6
            )
            assert region["meta"]["boundary_uncertainty"] == pytest.approx(
                ref.boundary_uncertainty, abs=1e-5
            )
    assert client.get("/metrics").json()["zoomed"] == (core.zoom is not None)


def test_batch_masks_are_the_cores(served, model_file, images):
    backend, client = served
    root, urls = images
    img = np.asarray(Image.open(root / "imgs" / "tall.png"))
    h, w = img.shape
    boxes = [(5, 10, 30, 20), (40, 50, 35, 25), (20, 70, 20, 15)]
    result = [rectangle(*b, rid=f"b{i}") for i, b in enumerate(boxes)] + [keypoint(60, 30, rid="k")]
    task = {
        "id": 4,
        "data": {"image": urls["tall.png"]},
        "annotations": [{"id": 1, "result": result}],
    }
    r = client.post("/predict", json=predict_body([task]))
    assert r.status_code == 200, r.text
    prediction = r.json()["results"][0]
    by_id = {reg["meta"]["prompt_region_ids"][0]: reg for reg in prediction["result"]}
    # the backend's encoder settings (fast path, precision auto), a cache of its own
    core = Segmenter(
        PASamPredictor(load_model(model_file), **{**backend.predictor.settings(), "cache": None})
    )
    core.set_image(img)
    refs = core.segment_many(boxes=np.array([pixel_box(*b, w, h) for b in boxes]))
    refs += core.segment_many(
        points=np.array([[pixel_point(60, 30, w, h)]]), labels=np.array([[1]])
    )
    for rid, ref in zip(["b0", "b1", "b2", "k"], refs, strict=True):
        if ref.empty:
            assert rid not in by_id  # no stray empty regions
            continue
        np.testing.assert_array_equal(decode_brush(by_id[rid]), ref.mask)
        assert by_id[rid]["score"] == pytest.approx(ref.score, abs=1e-6)
    assert 0.0 <= prediction["score"] <= 1.0
    assert prediction["model_version"] == backend.model_version


def test_empty_masks_are_no_regions_but_count_as_uncertain(served, images, monkeypatch):
    backend, client = served
    _, urls = images
    original = Segmenter.segment_many

    def first_empty(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out[0].mask = np.zeros_like(out[0].mask)  # the model found nothing for the first box
        out[0].mean_uncertainty = out[0].boundary_uncertainty = None
        out[0].band_uncertainty_sum, out[0].band_pixels = 0.0, 0  # as the core reports it
        return out

    monkeypatch.setattr(Segmenter, "segment_many", first_empty)
    task = {
        "id": 5,
        "data": {"image": urls["em.png"]},
        "annotations": [
            {
                "id": 1,
                "result": [rectangle(10, 10, 20, 20, rid="a"), rectangle(50, 50, 25, 25, rid="b")],
            }
        ],
    }
    before = client.get("/metrics").json()["empty_masks"]
    prediction = client.post("/predict", json=predict_body([task])).json()["results"][0]
    (region,) = prediction["result"]
    assert region["meta"]["prompt_region_ids"] == ["b"] and region["meta"]["area"] > 0
    b = region["meta"].get("boundary_uncertainty")
    if b is not None:  # with the adapter: the empty object weighs as one fully uncertain object
        assert prediction["score"] == pytest.approx(1 - (b + 1) / 2, abs=1e-4)
    assert client.get("/metrics").json()["empty_masks"] == before + 1

    # nothing found at all: an empty result, still a scored prediction (the prompts were there)
    def all_empty(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        for o in out:
            o.mask = np.zeros_like(o.mask)
            o.mean_uncertainty = o.boundary_uncertainty = None
        return out

    monkeypatch.setattr(Segmenter, "segment_many", all_empty)
    prediction = client.post("/predict", json=predict_body([task])).json()["results"][0]
    assert backend.predictor.model.has_adapter
    assert prediction["result"] == [] and prediction["score"] == 0.0


def test_prompts_the_core_refuses_are_422(served, images):
    _, client = served
    _, urls = images
    only_negative = [keypoint(30, 30, positive=False)]
    r = client.post(
        "/predict",
        json=predict_body([{"id": 1, "data": {"image": urls["em.png"]}}], context=only_negative),
    )
    assert r.status_code == 422 and "positive point" in r.json()["error"]


def test_serve_says_what_is_missing_at_start_up(tiny_checkpoint, monkeypatch, caplog):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from label_studio_backend.cli import serve

    for key in (
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_HOST",
        "LABEL_STUDIO_API_KEY",
        "LABEL_STUDIO_ACCESS_TOKEN",
        "PASAM_CHECKPOINT",
    ):
        monkeypatch.delenv(key, raising=False)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    cli = typer.Typer()
    cli.command()(serve)
    with caplog.at_level(logging.WARNING, logger="label_studio_backend"):
        r = CliRunner().invoke(cli, ["--checkpoint", str(tiny_checkpoint)])
    assert r.exit_code == 0, r.output
    assert started and started[0]["host"] == "127.0.0.1"
    text = caplog.text
    assert "LABEL_STUDIO_URL is not set" in text and "LABEL_STUDIO_API_KEY is not set" in text
    assert "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false" in text
    assert "UNTRAINED" in text
    caplog.clear()
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")
    with caplog.at_level(logging.WARNING, logger="label_studio_backend"):
        r = CliRunner().invoke(cli, ["--checkpoint", str(tiny_checkpoint)])
    assert r.exit_code == 0 and "is not set" not in caplog.text


@pytest.mark.parametrize(
    "host, refused",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("172.20.0.5", True),  # Docker's default networks
        ("192.168.1.5", True),
        ("::1", True),
        ("8.8.8.8", False),
        ("ml.example.org", False),
    ],
)
def test_start_up_names_the_label_studio_setting_for_addresses_its_guard_refuses(host, refused):
    from label_studio_backend.cli import startup_notes
    from label_studio_backend.config import Settings

    settings = Settings(label_studio_url="http://ls:8080", label_studio_api_key="abc")
    notes = startup_notes(settings, host=host, port=9090)
    assert any("LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false" in n for n in notes) == refused
    assert not any("is not set" in n for n in notes)


def test_sdk_download_chatter_is_debug_only(caplog):
    from label_studio_backend.cli import quiet_sdk_download_log

    quiet_sdk_download_log()
    sdk = logging.getLogger("label_studio_sdk._extensions.label_studio_tools.core.utils.io")
    with caplog.at_level(logging.INFO):
        sdk.info(
            "Download failed for proxy URL, retrying legacy upload path: %s", "/data/upload/1/a.png"
        )
        sdk.info("File downloaded to /tmp/x")
        sdk.info("Storage proxy file: Resolving url using hostname [%s]: %s", "h", "u")
        sdk.warning("something else")
    assert "proxy URL" not in caplog.text and "File downloaded" not in caplog.text
    assert "Storage proxy file" not in caplog.text
    assert "something else" in caplog.text
