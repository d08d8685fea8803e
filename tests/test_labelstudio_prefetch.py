"""Precomputed and prefetched embeddings for Label Studio projects (issue 16):
``pasam embed-project`` lists a project's tasks through Label Studio's API, reads each image
through the backend's guarded loader and stores what ``/predict`` will ask for (whole images,
tiles of large ones), resumably; ``PASAM_PREFETCH_TASKS`` embeds the next tasks of a project
after a prediction, in a bounded background queue that never delays a request."""

import io
import threading
import time

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from labelstudio_support import SAM_CONFIG, FakeLabelStudio, predict_body, rectangle
from PIL import Image
from typer.testing import CliRunner

from label_studio_backend.app import create_app
from label_studio_backend.config import Settings
from label_studio_backend.embed import embed_project
from label_studio_backend.labelconfig import parse_label_config
from label_studio_backend.model import PASamBackend
from label_studio_backend.prefetch import Prefetcher
from pasam_plugins.testing import make_test_checkpoint

PROJECT = 7
#: task id -> (image name, height, width); 700x640 is tiled (4 x 4 tiles) by a 256-px model
IMAGES = {11: ("small.png", 300, 200), 12: ("large.png", 700, 640), 14: ("next.png", 256, 320)}
REFUSED = 13  # its image is on another host: refused by the loader, the others go on


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # a whole-image model with a 256-px input: images above 512 px are tiled
    path = tmp_path_factory.mktemp("prefetch") / "tiny256.safetensors"
    return make_test_checkpoint(path, seed=3, variant="vit_tiny256")


@pytest.fixture()
def fake(em_section):
    files = {
        name: _png(np.ascontiguousarray(np.tile(em_section, (2, 2))[:h, :w]))
        for name, h, w in IMAGES.values()
    }
    with FakeLabelStudio(files) as ls:
        ls.projects[PROJECT] = {"label_config": SAM_CONFIG}
        tasks = [
            {"id": tid, "data": {"image": f"/data/upload/1/{name}"}}
            for tid, (name, *_) in IMAGES.items()
        ]
        tasks.append({"id": REFUSED, "data": {"image": "http://elsewhere.example/x.png"}})
        ls.tasks[PROJECT] = list(reversed(tasks))  # listed in task id order all the same
        yield ls


def _settings(ckpt, fake, **kw) -> Settings:
    return Settings(
        checkpoint=ckpt,
        device="cpu",
        label_studio_url=fake.url,
        label_studio_api_key=fake.personal_token,
        sync_model_version=False,
        **kw,
    )


def _box_task(tid: int, fake) -> tuple[dict, list]:
    """Task ``tid`` and a box prompt well inside one of its tiles (a box is answered on the
    tile that holds it: no window of its own)."""
    name, h, w = IMAGES[tid]
    task = {"id": tid, "data": {"image": f"/data/upload/1/{name}"}}
    box = rectangle(100 / w * 100, 110 / h * 100, 40 / w * 100, 30 / h * 100, width=w, height=h)
    return task, [box]


def _cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(embed_project)
    return app


def test_embed_project_stores_what_predict_asks_for_resumably(ckpt, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", fake.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", fake.personal_token)
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    cache = tmp_path / "cache"
    args = [str(PROJECT), "--checkpoint", str(ckpt), "--cache-dir", str(cache), "--device", "cpu"]
    res = CliRunner().invoke(_cli(), args)
    # 16 tiles of the large image + 2 whole images; the refused task is named and skipped
    assert "4 task(s), 18 embedding(s) computed, 0 already stored" in res.output, res.output
    assert f"task {REFUSED}: skipped: refusing to fetch" in res.output
    assert res.exit_code == 1 and "1 task(s) skipped" in res.output
    assert "Traceback" not in res.output
    store = cache / "embeddings"
    files = sorted(store.glob("*.safetensors"))
    assert len(files) == 18
    files[3].unlink()  # an interrupted run: one embedding missing
    res = CliRunner().invoke(_cli(), args)
    assert "1 embedding(s) computed, 17 already stored" in res.output, res.output
    # the server with the same settings never runs the encoder for these tasks
    backend = PASamBackend.from_settings(_settings(ckpt, fake, cache_dir=cache))
    client = TestClient(create_app(backend))
    for tid in (11, 12, 14):
        task, prompt = _box_task(tid, fake)
        r = client.post("/predict", json=predict_body([task], context=prompt, project="7.17"))
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["result"], tid
    assert backend.predictor.encoder_runs == 0
    assert backend.segmenter.mode == "whole"  # (the last task; the large one was tiled)


def test_embed_project_errors_are_one_line(ckpt, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", fake.personal_token)
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path))
    base = ["--checkpoint", str(ckpt), "--device", "cpu"]
    runner = CliRunner()
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_HOST", raising=False)
    res = runner.invoke(_cli(), [str(PROJECT), *base])
    assert res.exit_code == 2 and "LABEL_STUDIO_URL" in res.output
    monkeypatch.setenv("LABEL_STUDIO_URL", fake.url)
    res = runner.invoke(_cli(), ["99", *base])
    assert res.exit_code == 1 and "error: project 99: Label Studio answered HTTP 404" in res.output
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens there
    res = runner.invoke(_cli(), [str(PROJECT), *base])
    assert res.exit_code == 1 and res.output.startswith("error: project 7: cannot authenticate")
    assert "Connection refused" in res.output and len(res.output.splitlines()) == 1
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", fake.legacy_token)  # no token refresh first
    res = runner.invoke(_cli(), [str(PROJECT), *base])
    assert res.exit_code == 1 and "error: project 7: cannot reach Label Studio" in res.output
    assert len(res.output.splitlines()) == 1


def test_prefetch_embeds_the_next_tasks_so_their_first_click_runs_no_encoder(ckpt, fake):
    backend = PASamBackend.from_settings(_settings(ckpt, fake, prefetch_tasks=2))
    client = TestClient(create_app(backend))
    task, prompt = _box_task(11, fake)
    r = client.post("/predict", json=predict_body([task], context=prompt, project="7.17"))
    assert r.status_code == 200, r.text
    assert backend.prefetcher.wait(60)
    status = client.get("/metrics").json()["prefetch"]
    # tasks 12 (16 tiles) and 13 (refused: logged and counted, no HTTP error)
    assert status["embedded"] == 16 and status["tasks"] == 1 and status["failures"] == 1
    assert "refusing to fetch" in status["last_error"]
    runs = backend.predictor.encoder_runs
    task, prompt = _box_task(12, fake)
    r = client.post("/predict", json=predict_body([task], context=prompt, project="7.17"))
    assert r.status_code == 200 and r.json()["results"][0]["result"]
    assert backend.predictor.encoder_runs == runs  # the tile came from the cache
    assert backend.prefetcher.wait(60)  # (then 13 and 14 were prefetched)
    task, prompt = _box_task(14, fake)
    runs = backend.predictor.encoder_runs
    r = client.post("/predict", json=predict_body([task], context=prompt, project="7.17"))
    assert r.status_code == 200 and backend.predictor.encoder_runs == runs
    backend.close()
    assert not backend.prefetcher._thread.is_alive()


def test_prefetch_is_off_by_default(ckpt, fake, monkeypatch):
    monkeypatch.delenv("PASAM_PREFETCH_TASKS", raising=False)
    assert Settings.from_env().prefetch_tasks == 0
    backend = PASamBackend.from_settings(_settings(ckpt, fake))
    assert backend.prefetcher is None
    client = TestClient(create_app(backend))
    task, prompt = _box_task(11, fake)
    assert client.post("/predict", json=predict_body([task], context=prompt)).status_code == 200
    assert not [r for r in fake.requests if r[1].startswith("/api/tasks")]
    assert client.get("/metrics").json()["prefetch"] is None
    monkeypatch.setenv("PASAM_PREFETCH_TASKS", "-1")
    with pytest.raises(ValueError, match="PASAM_PREFETCH_TASKS"):
        Settings.from_env().validate()


def test_retrieve_predictions_on_unprompted_tasks_warms_the_cache(ckpt, fake, monkeypatch):
    """'Retrieve predictions' on tasks without boxes or keypoints (automatic pre-annotation
    off) answers at once with no prediction and embeds their images in the background, every
    tile of a large one; the first click there then runs no encoder. A refused image is
    counted, never an HTTP error; tasks with prompts are not queued."""
    monkeypatch.setenv("PASAM_AUTO", "0")
    backend = PASamBackend.from_settings(_settings(ckpt, fake))
    client = TestClient(create_app(backend))
    tasks = [{"id": t, "data": {"image": f"/data/upload/1/{IMAGES[t][0]}"}} for t in (12, 14)]
    tasks.append({"id": REFUSED, "data": {"image": "http://elsewhere.example/x.png"}})
    prompted, box = _box_task(11, fake)
    prompted = {**prompted, "annotations": [{"id": 1, "result": box}]}
    r = client.post("/predict", json=predict_body([*tasks, prompted], project="7.17"))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[:3] == [[], [], []] and results[3]["result"]  # nothing stored for them
    assert backend.warmer.wait(60)
    warm = client.get("/metrics").json()["warm"]
    assert (warm["tasks"], warm["embedded"], warm["failures"]) == (2, 16 + 1, 1)
    assert "refusing to fetch" in warm["last_error"]
    for tid in (12, 14):
        task, prompt = _box_task(tid, fake)
        runs = backend.predictor.encoder_runs
        r = client.post("/predict", json=predict_body([task], context=prompt, project="7.17"))
        assert r.status_code == 200 and r.json()["results"][0]["result"]
        assert backend.predictor.encoder_runs == runs, tid
    backend.close()
    assert not backend.warmer._thread.is_alive()


class _SlowBackend:
    """embed_task blocks until released; records what it embedded."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.embedded: list[int] = []
        self.busy = False

    def embed_task(self, task, config, token=None, *, proceed=None):
        self.started.set()
        if proceed is not None and not proceed():
            return 0, 0
        self.release.wait(10)
        self.embedded.append(task["id"])
        return 1, 0

    def wait_idle(self, timeout=None):
        if self.busy:
            time.sleep(timeout or 0)
            return False
        return True


class _Tasks:
    """The project's tasks are 1..100 in every project."""

    def __init__(self) -> None:
        self.listed: list[tuple[int, int]] = []

    def tasks(self, project, *, after=None, limit=None, token=None):
        self.listed.append((project, after))
        return iter([{"id": i, "data": {}} for i in range(after + 1, after + 1 + limit)])


def test_prefetch_queue_is_bounded_newer_requests_cancel_and_stop_ends_it():
    config = parse_label_config(SAM_CONFIG)
    backend, api = _SlowBackend(), _Tasks()
    pre = Prefetcher(backend, api, count=3, queue_size=4)
    pre.after(1, 10, config, None)
    assert backend.started.wait(5)  # task 11 of project 1 is being embedded
    for project in range(2, 200):  # a flood of requests
        pre.after(project, 10, config, None)
        assert pre.queued <= 4
    assert pre.status()["dropped"] == 198 - 4
    pre.after(1, 50, config, None)  # the user moved on in project 1
    assert pre.queued == 4
    backend.release.set()
    assert pre.wait(30)
    # project 1: task 11 (in progress) then the newer request; 12 and 13 were cancelled
    assert [t for t in backend.embedded if t < 50] == [11] + [11, 12, 13] * 3
    assert backend.embedded[-3:] == [51, 52, 53]
    assert [p for p, _ in api.listed] == [1, 197, 198, 199, 1]
    # a request waits while /predict requests are being answered, and stop() ends it
    backend.busy, backend.embedded = True, []
    pre.after(5, 0, config, None)
    time.sleep(0.3)
    assert backend.embedded == []
    t0 = time.perf_counter()
    pre.stop(timeout=5)
    assert time.perf_counter() - t0 < 2 and not pre._thread.is_alive()
    assert backend.embedded == []
    pre.after(6, 0, config, None)  # after stop: ignored
    assert pre.queued == 0
