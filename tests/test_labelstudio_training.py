"""Fine-tuning from Label Studio: START_TRAINING (and every N annotation events, and the
legacy ``/train``) fetch the project's brush annotations from a fake Label Studio, fine-tune
the tiny model in a background thread, save it and serve it under a new model version.

Training is kept tiny (1-2 steps, one object per step); the webhook must answer at once, so
the tests hold the backend's model lock (as a long /predict would) while they check that.
"""

import json
import time

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from labelstudio_support import (
    SAM_CONFIG,
    FakeLabelStudio,
    brush,
    decode_brush,
    keypoint,
    predict_body,
    rectangle,
)
from PIL import Image

from label_studio_backend.app import create_app
from label_studio_backend.config import Settings
from label_studio_backend.model import PASamBackend
from label_studio_backend.training import project_id_of
from pasam_plugins.checkpoint import load_model, read_metadata

TRAINED = 7  # project with brush annotations
NO_BRUSH = 8  # project whose annotations hold only rectangles


@pytest.fixture(scope="module")
def cells(isbi_dir) -> tuple[bytes, list[np.ndarray]]:
    """EM section 0 as PNG bytes, and three of its cells as masks."""
    import io

    em = np.asarray(Image.open(isbi_dir / "image" / "0.png"))
    lab = np.asarray(Image.open(isbi_dir / "label" / "0.png")) > 128
    n, cc, stats, _ = cv2.connectedComponentsWithStats(lab.astype(np.uint8))
    big = [i for i in range(1, n) if 800 < stats[i, cv2.CC_STAT_AREA] < 6000][:3]
    assert len(big) == 3
    buf = io.BytesIO()
    Image.fromarray(em).save(buf, format="PNG")
    return buf.getvalue(), [cc == i for i in big]


@pytest.fixture(scope="module")
def fake_ls(cells):
    png, masks = cells
    with FakeLabelStudio({"em.png": png, "em2.png": png}) as fake:
        regions = [brush(m, rid=f"c{i}") for i, m in enumerate(masks)]
        fake.tasks[TRAINED] = [
            {"id": 1, "data": {"image": "/data/upload/1/em.png"},
             "annotations": [{"id": 11, "result": regions, "was_cancelled": False,
                              "updated_at": "2026-01-02T10:00:00Z"}]},
            {"id": 2, "data": {"image": "/data/upload/1/em2.png"}, "annotations": []},
        ]
        fake.tasks[NO_BRUSH] = [
            {"id": 3, "data": {"image": "/data/upload/1/em.png"},
             "annotations": [{"id": 12, "result": [rectangle(10, 10, 20, 20)]}]},
        ]
        fake.projects[TRAINED] = {"label_config": SAM_CONFIG}
        fake.projects[NO_BRUSH] = {"label_config": SAM_CONFIG}
        yield fake


def make_backend(checkpoint, fake, tmp_path, **train) -> PASamBackend:
    settings = Settings(
        checkpoint=checkpoint,
        label_studio_url=fake.url,
        label_studio_api_key=train.pop("api_key", fake.personal_token),
        model_dir=tmp_path / "models",
        train_steps=train.pop("steps", 2),
        train_images_per_step=1,
        train_objects_per_image=1,
        # the card sync has its own test below; off here, so the API calls counted are
        # fine-tuning's own
        sync_model_version=train.pop("sync", False),
        **train,
    )
    return PASamBackend.from_settings(settings)


def start_training(client, project: int, **project_fields):
    return client.post("/webhook", json={"action": "START_TRAINING",
                                         "project": {"id": project, **project_fields}})


def wait_until_finished(client, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/health").json()["training"]
        if status["status"] != "running":
            return status
        time.sleep(0.2)
    pytest.fail(f"fine-tuning did not finish within {timeout} s: {status}")


def click(client, project: int = TRAINED):
    body = predict_body([{"id": 1, "data": {"image": "/data/upload/1/em.png"}}],
                        context=[keypoint(40, 40)], project=f"{project}.1700000000")
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_start_training_answers_at_once_then_serves_the_fine_tuned_model(
    tiny_checkpoint, fake_ls, tmp_path
):
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path)
    client = TestClient(create_app(backend))
    old_version = backend.model_version
    old_signature = backend.predictor.model_signature
    before = click(client)
    assert before["model_version"] == old_version
    assert client.get("/health").json()["training"]["status"] == "idle"

    with backend.lock:  # the model is busy (a long /predict): the webhook must not wait
        t0 = time.perf_counter()
        r = start_training(client, TRAINED, label_config=SAM_CONFIG)
        assert time.perf_counter() - t0 < 5.0
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "training started" and r.json()["project"] == TRAINED
        # a meaningful answer: what runs, on which model, and where progress shows
        assert r.json()["steps"] == 2 and r.json()["model_version"] == old_version
        assert "Settings -> Model" in r.json()["progress"]
        # a second click on "Start Training" while the first run is going
        again = start_training(client, TRAINED)
        assert again.status_code == 201 and again.json()["status"] == "already training"
        status = client.get("/health").json()["training"]
        assert status["status"] == "running" and status["project"] == TRAINED
        assert backend.model_version == old_version  # not swapped while the lock is held
        assert client.get("/metrics").json()["training"]["status"] == "running"

    status = wait_until_finished(client)
    assert status["status"] == "done", status
    assert status["error"] is None and status["step"] == status["steps"] == 2
    assert np.isfinite(status["loss"]) and status["runs"] == 1
    assert status["images"] == 1  # the task without annotations is not used

    # a new model version everywhere: /health, /setup, predictions
    new_version = backend.model_version
    assert new_version != old_version and status["model_version"] == new_version
    assert status["previous_model_version"] == old_version
    assert client.get("/health").json()["model_version"] == new_version
    assert client.post("/setup", json={"project": f"{TRAINED}.1", "schema": SAM_CONFIG}).json() == {
        "model_version": new_version
    }
    after = click(client)
    assert after["model_version"] == new_version
    assert after["results"][0]["model_version"] == new_version
    # the guiding conv was trained: the old model's cached embedding/guide is not reused
    assert backend.predictor.model_signature != old_signature
    assert backend.predictor.encoder_runs == 1

    # the tasks came from Label Studio's API with the personal access token's access token
    gets = [(path, auth) for method, path, auth in fake_ls.requests if path.startswith("/api/tasks")]
    assert gets and all(auth and auth.startswith("Bearer ") for _, auth in gets)
    assert "fields=all" in gets[0][0] and f"project={TRAINED}" in gets[0][0]

    # saved atomically as an adapter file naming its base, named after its model version; a
    # restart on it serves the same model
    saved = status["checkpoint"]
    assert saved.endswith(f"labelstudio-project{TRAINED}-{new_version}.safetensors")
    meta = read_metadata(saved)
    assert meta["contents"] == "adapter"
    assert meta["base_checkpoint"] == str(tiny_checkpoint.resolve())
    assert meta["provenance"]["project"] == TRAINED and meta["provenance"]["steps"] == 2
    assert [p.name for p in (tmp_path / "models").glob("*.safetensors")] == [
        saved.rsplit("/", 1)[-1]
    ]
    # announced to the other workers sharing the models dir (label_studio_backend.shared)
    assert json.loads((tmp_path / "models" / "current.json").read_text())["checkpoint"] == saved
    restarted = PASamBackend.from_settings(Settings(checkpoint=saved, label_studio_url=fake_ls.url,
                                                    label_studio_api_key=fake_ls.personal_token))
    assert restarted.model_version == new_version
    again = TestClient(create_app(restarted))
    assert [r["value"]["rle"] for r in click(again)["results"][0]["result"]] == [
        r["value"]["rle"] for r in after["results"][0]["result"]
    ]


def test_project_without_usable_annotations_fails_and_the_old_model_keeps_serving(
    tiny_checkpoint, fake_ls, tmp_path
):
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path)
    client = TestClient(create_app(backend))
    version = backend.model_version
    # no label_config in the payload: it is fetched from /api/projects/ID/
    r = start_training(client, NO_BRUSH)
    assert r.status_code == 201 and r.json()["status"] == "training started"
    status = wait_until_finished(client)
    assert status["status"] == "failed"
    assert "no usable annotations" in status["error"] and f"project {NO_BRUSH}" in status["error"]
    assert "BrushLabels" in status["error"]
    assert status["model_version"] == version == backend.model_version
    metrics = client.get("/metrics").json()
    assert metrics["training"]["status"] == "failed" and metrics["training"]["error"] == status["error"]
    assert click(client, NO_BRUSH)["model_version"] == version
    assert not list((tmp_path / "models").glob("*.safetensors"))
    assert not (tmp_path / "models" / "current.json").exists()  # nothing announced

    # a project Label Studio does not know: the API error is the message
    r = start_training(client, 99)
    status = wait_until_finished(client)
    assert status["status"] == "failed" and "HTTP 404" in status["error"]
    # a rejected personal access token
    bad = make_backend(tiny_checkpoint, fake_ls, tmp_path, api_key="not-a-token")
    bad_client = TestClient(create_app(bad))
    assert start_training(bad_client, TRAINED).status_code == 201
    status = wait_until_finished(bad_client)
    assert status["status"] == "failed" and "LABEL_STUDIO_API_KEY" in status["error"]
    assert bad.model_version == version
    # no project id at all is a bad request
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {}})
    assert r.status_code == 400 and "project" in r.json()["error"]


def test_every_n_annotation_events_start_training(tiny_checkpoint, fake_ls, tmp_path):
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path, train_every_n_annotations=2)
    client = TestClient(create_app(backend))

    def event(action: str, project: int):
        r = client.post("/webhook", json={"action": action, "project": {"id": project},
                                          "annotation": {"id": 5, "project": project}})
        assert r.status_code == 201, r.text
        return r.json()

    first = event("ANNOTATION_CREATED", NO_BRUSH)
    assert first["status"] == "ok" and first["annotations_until_training"] == 1
    assert client.get("/health").json()["training"]["status"] == "idle"
    assert event("ANNOTATION_DELETED", NO_BRUSH).get("annotations_until_training") is None
    second = event("ANNOTATION_UPDATED", NO_BRUSH)
    assert second["training"] == "training started"
    status = wait_until_finished(client)
    assert status["trigger"] == "2 annotation events" and status["project"] == NO_BRUSH
    assert status["runs"] == 1 and status["every_n_annotations"] == 2
    # the count starts again
    assert event("ANNOTATION_CREATED", NO_BRUSH)["annotations_until_training"] == 1
    # off by default
    default = make_backend(tiny_checkpoint, fake_ls, tmp_path)
    r = TestClient(create_app(default)).post(
        "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": TRAINED}})
    assert r.json() == {"status": "ok", "action": "ANNOTATION_CREATED"}
    assert default.training_status()["runs"] == 0


def test_legacy_train_request_uses_the_tasks_it_carries(tiny_checkpoint, fake_ls, tmp_path):
    """Label Studio without the START_TRAINING webhook flag POSTs the annotated tasks to
    /train; no API call is needed then."""
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path, steps=1)
    client = TestClient(create_app(backend))
    version = backend.model_version

    def api_calls() -> int:
        return len([r for r in fake_ls.requests if r[1].startswith(("/api/tasks", "/api/projects"))])

    n_requests = api_calls()
    r = client.post("/train", json={"annotations": fake_ls.tasks[TRAINED], "project": f"{TRAINED}.1700000000",
                                    "label_config": SAM_CONFIG, "params": {}})
    assert r.status_code == 201 and r.json()["status"] == "training started"
    status = wait_until_finished(client)
    assert status["status"] == "done" and status["trigger"] == "POST /train"
    assert backend.model_version != version
    assert api_calls() == n_requests
    assert client.post("/train", json={"project": "1.1"}).status_code == 400


def test_project_ids_of_webhook_payloads():
    assert project_id_of({"project": {"id": 3}}) == 3
    assert project_id_of({"project": "12.1700000000"}) == 12
    assert project_id_of({"annotation": {"project": 5}}) == 5
    assert project_id_of({"task": {"project": 6}, "project": None}) == 6
    assert project_id_of({"project": {"id": True}}) is None
    assert project_id_of({}) is None


def test_plain_sam_gets_an_adapter_and_a_fine_tuned_adapter_file_is_saved_in_full(
    fake_ls, tmp_path
):
    """Serving plain SAM weights: fine-tuning adds a PA-SAM adapter (predictions then carry
    uncertainties) and saves it as an adapter file on the SAM file. A server restarted on
    that adapter file (base found through its metadata) saves its own fine-tuning as an
    adapter file on the same SAM file (the core's rule, ``save_finetuned``), with the adapter
    file it started from as its provenance."""
    from pasam_plugins.testing import make_test_checkpoint

    sam = make_test_checkpoint(tmp_path / "sam.safetensors", seed=2, adapter=False)
    backend = make_backend(sam, fake_ls, tmp_path, steps=1)
    client = TestClient(create_app(backend))
    region = click(client)["results"][0]["result"][0]
    assert "mean_uncertainty" not in region["meta"]
    start_training(client, TRAINED, label_config=SAM_CONFIG)
    status = wait_until_finished(client)
    assert status["status"] == "done", status
    assert backend.predictor.model.has_adapter
    region = click(client)["results"][0]["result"][0]
    assert 0.0 <= region["meta"]["mean_uncertainty"] <= 1.0
    meta = read_metadata(status["checkpoint"])
    assert meta["contents"] == "adapter" and meta["base_checkpoint"] == str(sam.resolve())

    again = make_backend(status["checkpoint"], fake_ls, tmp_path / "second", steps=1)
    assert again.model_version == backend.model_version
    second = TestClient(create_app(again))
    start_training(second, TRAINED, label_config=SAM_CONFIG)
    status2 = wait_until_finished(second)
    assert status2["status"] == "done", status2
    meta2 = read_metadata(status2["checkpoint"])
    assert meta2["contents"] == "adapter" and meta2["base_checkpoint"] == str(sam.resolve())
    assert meta2["provenance"]["base"] == status["checkpoint"]  # what the run started from
    assert meta["provenance"]["base"] == str(sam)
    # the adapter file on the SAM file is the whole fine-tuned model
    reloaded = load_model(status2["checkpoint"])
    for k, v in again.predictor.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v.cpu()), k
    assert again.model_version not in (backend.model_version, status["previous_model_version"])


def test_retraining_on_unchanged_annotations_makes_no_new_version_or_file(
    tiny_checkpoint, fake_ls, tmp_path
):
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path, steps=1)
    client = TestClient(create_app(backend))
    start_training(client, TRAINED, label_config=SAM_CONFIG)
    first = wait_until_finished(client)
    assert first["status"] == "done" and not first["unchanged"]
    version = backend.model_version
    files = sorted(p.name for p in (tmp_path / "models").glob("*.safetensors"))
    assert len(files) == 1

    # "Start Training" again, nothing annotated since: nothing trained, nothing written
    r = start_training(client, TRAINED, label_config=SAM_CONFIG)
    assert r.status_code == 201 and r.json()["status"] == "training started"
    again = wait_until_finished(client)
    assert again["status"] == "done" and again["unchanged"] is True
    assert again["model_version"] == version == backend.model_version
    assert again["checkpoint"] == first["checkpoint"] and "images" not in again
    assert sorted(p.name for p in (tmp_path / "models").glob("*.safetensors")) == files

    # changed annotations (the cells drawn a few pixels wider) train a new model, saved
    # next to the first
    task = dict(fake_ls.tasks[TRAINED][0])
    kernel = np.ones((7, 7), np.uint8)
    wider = [brush(cv2.dilate(decode_brush(r).astype(np.uint8), kernel) > 0, rid=r["id"])
             for r in task["annotations"][0]["result"]]
    ann = dict(task["annotations"][0], result=wider, updated_at="2026-01-03T10:00:00Z")
    fake_ls.tasks[TRAINED] = [dict(task, annotations=[ann]), *fake_ls.tasks[TRAINED][1:]]
    try:
        start_training(client, TRAINED, label_config=SAM_CONFIG)
        third = wait_until_finished(client)
    finally:
        fake_ls.tasks[TRAINED] = [task, *fake_ls.tasks[TRAINED][1:]]
    assert third["status"] == "done" and not third["unchanged"]
    assert backend.model_version not in (version, first["previous_model_version"])
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 2


def test_progress_and_outcome_show_on_the_model_card_in_label_studio(
    tiny_checkpoint, fake_ls, tmp_path
):
    """With the sync on, the backend's card in the project (Settings -> Model) reads the
    step while a run goes, then the new model version (and the project scores it); a failed
    run leaves its reason on the card."""
    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path, sync=True)
    for pid, ml_id in ((TRAINED, 70), (NO_BRUSH, 80)):
        fake_ls.projects[pid].update(model_version="PA-SAM", show_collab_predictions=True)
        fake_ls.ml_backends[ml_id] = {"id": ml_id, "project": pid, "url": "http://127.0.0.1:9090",
                                      "title": "PA-SAM", "model_version": backend.model_version,
                                      "auth_method": "NONE"}
    fake_ls.on_list_ml = lambda b: b.update(model_version=backend.model_version)  # its /setup
    client = TestClient(create_app(backend))
    try:
        old = backend.model_version
        assert client.post("/setup", json={"project": f"{TRAINED}.1", "schema": SAM_CONFIG}).status_code == 200
        assert backend.sync.wait_idle()
        assert fake_ls.ml_backends[70]["title"] == old and fake_ls.projects[TRAINED]["model_version"] == old

        start_training(client, TRAINED, label_config=SAM_CONFIG)
        status = wait_until_finished(client)
        assert status["status"] == "done"
        assert backend.sync.wait_idle()
        new = backend.model_version
        assert fake_ls.ml_backends[70]["title"] == new
        assert fake_ls.projects[TRAINED]["model_version"] == new
        titles = [h["title"] for h in backend.sync.status()["history"] if h["project"] == TRAINED]
        assert any(t.startswith(f"{old} (fine-tuning") for t in titles), titles
        assert titles[-1] == new

        start_training(client, NO_BRUSH)
        assert wait_until_finished(client)["status"] == "failed"
        assert backend.sync.wait_idle()
        card = fake_ls.ml_backends[80]["title"]
        assert card.startswith(f"{new} (fine-tuning failed: project {NO_BRUSH} has no usable annotations")
    finally:
        for ml_id in (70, 80):
            fake_ls.ml_backends.pop(ml_id, None)
        fake_ls.on_list_ml = None
        backend.close()
def test_train_parts_setting_adapts_a_prompt_learning_module_and_hq_sam_says_what_it_lacks(
    tiny_checkpoint, fake_ls, tmp_path
):
    """Issue 18: PASAM_TRAIN_PARTS chooses what "Start Training" adapts. ``plm`` on a PA-SAM
    model keeps its adapter and uncertainty, adds a prompt learning module, saves a small file
    naming its base and serves a new version. A bad value is refused before the server starts.
    An HQ-SAM model is served and says it has no uncertainty map or mined points."""
    from pasam_plugins.checkpoint import load_model, save_checkpoint
    from pasam_plugins.testing import make_test_hq_model

    with pytest.raises(ValueError, match="PASAM_TRAIN_PARTS='lora'"):
        Settings(train_parts="lora").validate()
    with pytest.raises(ValueError, match="PASAM_TRAIN_PARTS='sam'"):
        Settings(train_parts="sam").validate()

    backend = make_backend(tiny_checkpoint, fake_ls, tmp_path, steps=1, train_parts="plm")
    client = TestClient(create_app(backend))
    health = client.get("/health").json()
    assert health["model"] == "SAM + PA-SAM adapter"
    start_training(client, TRAINED, label_config=SAM_CONFIG)
    status = wait_until_finished(client)
    assert status["status"] == "done", status
    model = backend.predictor.model
    assert model.has_adapter and model.plm is not None
    assert client.get("/health").json()["model"] == "SAM + PA-SAM adapter + prompt learning module"
    assert client.get("/health").json()["model_version"] != health["model_version"]
    region = click(client)["results"][0]["result"][0]
    assert 0.0 <= region["meta"]["mean_uncertainty"] <= 1.0
    meta = read_metadata(status["checkpoint"])
    assert meta["plm"] is True and meta["contents"] == "adapter"
    assert meta["provenance"]["train"] == "plm"
    assert meta["base_checkpoint"] == str(tiny_checkpoint.resolve())
    assert load_model(status["checkpoint"]).plm is not None

    hq_file = save_checkpoint(make_test_hq_model(seed=3), tmp_path / "hq.safetensors")
    hq = make_backend(hq_file, fake_ls, tmp_path / "hq", steps=1)
    hq_client = TestClient(create_app(hq))
    text = hq_client.get("/health").json()["model"]
    assert "HQ-SAM" in text and "no uncertainty map or mined points" in text
    region = click(hq_client)["results"][0]["result"][0]
    assert "mean_uncertainty" not in region["meta"] and region["meta"]["area"] > 0
