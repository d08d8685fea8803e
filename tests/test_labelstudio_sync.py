"""The model-version sync with Label Studio (label_studio_backend.sync) against a fake Label
Studio that applies Label Studio 1.23's rules: the project's model version follows the ML
backend's title when it equals the old title, and can only be set to a backend's title or a
version that has predictions."""

import time

import pytest
from fastapi.testclient import TestClient
from labelstudio_support import SAM_CONFIG, FakeLabelStudio

from label_studio_backend.lsapi import LabelStudioClient
from label_studio_backend.sync import ModelVersionSync, card_title

V1 = "pasam-vit_tiny-aaaaaaaaaaaa"
V2 = "pasam-vit_tiny-bbbbbbbbbbbb"


@pytest.fixture()
def fake():
    with FakeLabelStudio({}) as fake:
        yield fake


def connect(
    fake,
    project: int,
    *,
    title: str = "PA-SAM",
    model_version: str | None = None,
    version: str = V1,
    ml_id: int | None = None,
    **backend,
) -> dict:
    """A project with a connected backend, as Label Studio leaves it after "Connect Model"."""
    ml_id = ml_id or project * 10
    fake.projects[project] = {
        "label_config": SAM_CONFIG,
        "show_collab_predictions": True,
        "model_version": title if model_version is None else model_version,
    }
    fake.ml_backends[ml_id] = {
        "id": ml_id,
        "project": project,
        "url": "http://127.0.0.1:9090",
        "title": title,
        "model_version": version,
        "auth_method": "NONE",
        **backend,
    }
    return fake.ml_backends[ml_id]


class Served:
    def __init__(self, version: str) -> None:
        self.version = version

    def __call__(self) -> str:
        return self.version


def make_sync(fake, served: Served, **kw) -> ModelVersionSync:
    client = LabelStudioClient(fake.url, lambda token: f"Token {fake.legacy_token}", timeout=10)
    return ModelVersionSync(client, version=served, connect_wait=kw.pop("connect_wait", 5), **kw)


def test_connect_names_the_card_after_the_version_and_the_project_scores_it(fake):
    ml = connect(fake, 1)
    sync = make_sync(fake, Served(V1))
    sync.project_seen(1, None)
    assert sync.wait_idle()
    assert ml["title"] == V1
    assert fake.projects[1]["model_version"] == V1  # followed the title: live model, scored
    assert sync.status()["projects"] == {"1": V1}
    # Label Studio calls /setup again and again (page views, every "Retrieve predictions"):
    # nothing more is sent
    n = len(fake.requests)
    for _ in range(3):
        sync.project_seen(1, None)
    assert sync.wait_idle() and len(fake.requests) == n


def test_rename_waits_for_label_studio_to_finish_connecting(fake):
    """Label Studio sets the project's model version to the title right after /setup: a
    rename before that would leave the project on the old title."""
    ml = connect(fake, 2, model_version="")
    sync = make_sync(fake, Served(V1))
    sync.project_seen(2, None)
    time.sleep(1.0)
    fake.projects[2]["model_version"] = "PA-SAM"  # Label Studio's perform_create
    assert sync.wait_idle()
    assert ml["title"] == V1 and fake.projects[2]["model_version"] == V1


def test_a_model_version_picked_by_a_person_stays(fake):
    ml = connect(fake, 3, model_version="detector-v1")
    sync = make_sync(fake, Served(V1))
    sync.project_seen(3, None)
    assert sync.wait_idle()
    assert ml["title"] == V1 and fake.projects[3]["model_version"] == "detector-v1"
    assert not [p for p, _ in fake.patches if p.startswith("/api/projects")]


def test_fine_tuning_progress_then_the_new_version(fake):
    ml = connect(fake, 4)
    served = Served(V1)
    sync = make_sync(fake, served)
    sync.project_seen(4, None)
    assert sync.wait_idle() and fake.projects[4]["model_version"] == V1
    fake.prediction_versions[4] = {V1}  # "Retrieve predictions" stored V1 predictions

    sync.note(4, "fine-tuning: step 3/10")
    assert sync.wait_idle()
    assert ml["title"] == f"{V1} (fine-tuning: step 3/10)"
    # the project keeps scoring the served version's predictions meanwhile
    assert fake.projects[4]["model_version"] == V1

    served.version = V2  # the fine-tuned model is swapped in
    fake.on_list_ml = lambda b: b.update(model_version=served.version)  # its /setup answer
    sync.served(V2)
    sync.note(4, None)
    assert sync.wait_idle()
    assert ml["title"] == V2 and fake.projects[4]["model_version"] == V2


def test_a_failure_note_stays_until_the_next_batch_prediction(fake):
    ml = connect(fake, 5)
    sync = make_sync(fake, Served(V1))
    sync.note(5, "fine-tuning failed: project 5 has no usable annotations", sticky=True)
    assert sync.wait_idle()
    assert ml["title"] == f"{V1} (fine-tuning failed: project 5 has no usable annotations)"
    # no prediction of V1 exists: Label Studio refuses V1 as the project's version; the
    # project follows the title until the note goes
    sync.project_seen(5, None)
    assert sync.wait_idle() and ml["title"].startswith(f"{V1} (fine-tuning failed")
    sync.predicted(5)
    assert sync.wait_idle()
    assert ml["title"] == V1 and fake.projects[5]["model_version"] == V1


def test_basic_auth_travels_with_the_rename(fake):
    connect(fake, 6, auth_method="BASIC_AUTH")
    sync = make_sync(fake, Served(V1), basic_auth=("ann", "s3cret"))
    sync.project_seen(6, None)
    assert sync.wait_idle()
    ((path, body),) = [(p, b) for p, b in fake.patches if p.startswith("/api/ml/")]
    assert body == {
        "title": V1,
        "url": "http://127.0.0.1:9090",
        "project": 6,
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": "ann",
        "basic_auth_pass": "s3cret",
    }


def test_failures_are_reported_and_not_retried_at_every_setup(fake):
    # a project where no backend reports this server's version (another backend)
    connect(fake, 7, version="someone-else-1")
    sync = make_sync(fake, Served(V1), retry_after=60)
    sync.project_seen(7, None)
    assert sync.wait_idle()
    status = sync.status()
    assert status["failed"] == {"7": V1} and "no ML backend" in status["history"][-1]["error"]
    n = len(fake.requests)
    for _ in range(5):  # Label Studio's /setup calls do not trigger new attempts
        sync.project_seen(7, None)
    assert sync.wait_idle() and len(fake.requests) == n
    # Label Studio unreachable: an error, not an exception
    dead = ModelVersionSync(
        LabelStudioClient("http://127.0.0.1:9", lambda t: "Token x", timeout=2),
        version=Served(V1),
        connect_wait=0,
    )
    dead.project_seen(1, None)
    assert dead.wait_idle() and "cannot reach Label Studio" in dead.status()["history"][-1]["error"]


def test_card_title_keeps_long_notes_short():
    assert card_title(V1, None) == V1
    title = card_title(V1, "fine-tuning failed: " + "x" * 500)
    assert title.startswith(f"{V1} (fine-tuning failed: x") and title.endswith("...)")
    assert len(title) < len(V1) + 170


def test_backend_setup_drives_the_sync_and_metrics_show_it(tiny_checkpoint, fake):
    from label_studio_backend.app import create_app
    from label_studio_backend.config import Settings
    from label_studio_backend.model import PASamBackend

    backend = PASamBackend.from_settings(
        Settings(
            checkpoint=tiny_checkpoint,
            label_studio_url=fake.url,
            label_studio_api_key=fake.legacy_token,
        )
    )
    ml = connect(fake, 8, version=backend.model_version)
    client = TestClient(create_app(backend))
    r = client.post("/setup", json={"project": "8.1700000000", "schema": SAM_CONFIG})
    assert r.status_code == 200 and r.json() == {"model_version": backend.model_version}
    assert backend.sync.wait_idle()
    assert ml["title"] == backend.model_version
    assert fake.projects[8]["model_version"] == backend.model_version
    sync = client.get("/metrics").json()["label_studio_sync"]
    assert sync["enabled"] and sync["projects"] == {"8": backend.model_version}
    # off with PASAM_SYNC_MODEL_VERSION=0; without LABEL_STUDIO_URL it cannot run
    off = PASamBackend.from_settings(
        Settings(checkpoint=tiny_checkpoint, label_studio_url=fake.url, sync_model_version=False)
    )
    assert off.sync is None
    alone = PASamBackend.from_settings(Settings(checkpoint=tiny_checkpoint))
    assert not alone.sync.enabled
    assert (
        TestClient(create_app(alone))
        .post("/setup", json={"project": "8.1", "schema": SAM_CONFIG})
        .status_code
        == 200
    )
