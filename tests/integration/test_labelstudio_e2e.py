"""End to end with a real Label Studio 1.23.2 and ``pasam serve``.

Label Studio is installed once into its own cached venv by ``scripts/install_labelstudio.sh``
(``${PASAM_LS_VENV:-~/.cache/pasam/ls-venv}``), started on 127.0.0.1 with a fresh data dir,
and driven through its REST API the way the frontend does: a project with the usual
interactive SAM config, ISBI EM sections (non-square crops) served by local-files storage,
the backend connected at ``/api/ml``, interactive keypoint and rectangle requests through
``/api/ml/{id}/interactive-annotating``, "Retrieve predictions" on tasks with rectangle
annotations, and "Start Training" (``/api/ml/{id}/train``) after a brush annotation: the
backend fine-tunes in the background and then serves a new model version. The backend
downloads the images (and the annotated tasks) from Label Studio with a personal access token.

Run: ``pytest -m integration tests/integration/test_labelstudio_e2e.py`` (a few minutes the
first time: installing Label Studio, its first start with migrations ~40 s).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

# installing Label Studio (first run) and its first start take minutes: no per-test timeout
# from the command line may cut the module fixtures short
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
SAM_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cell" background="#FFA39E"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Cell" smart="true" background="#250dd3" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Cell" background="#FFC069" showInline="true"/>
  </RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float, **kwargs) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if requests.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not come up within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, n: int = 60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process started in its own session (and its children), then kill."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ls_venv() -> Path:
    venv = Path(os.environ.get("PASAM_LS_VENV", Path.home() / ".cache/pasam/ls-venv"))
    env = {**os.environ, "PASAM_LS_VENV": str(venv), "PASAM_LS_VERSION": LS_VERSION}
    env.setdefault("PASAM_LS_PYTHON", sys.executable)
    r = subprocess.run(
        ["bash", str(ROOT / "scripts/install_labelstudio.sh")],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    if r.returncode != 0:
        pytest.fail(f"installing Label Studio {LS_VERSION} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return venv


@pytest.fixture(scope="module")
def image_root(tmp_path_factory, isbi_dir) -> Path:
    """Local-files root with ISBI EM sections: a wide crop, a tall crop and a full section."""
    root = tmp_path_factory.mktemp("ls-files")
    d = root / "isbi"
    d.mkdir()
    for i, (name, crop) in enumerate(
        [("0-wide.png", np.s_[64:448, :]), ("1-tall.png", np.s_[:, 96:416]), ("2-full.png", np.s_[:, :]),
         ("3-wide.png", np.s_[128:384, :])]
    ):
        em = np.asarray(Image.open(isbi_dir / "image" / f"{i}.png"))
        Image.fromarray(np.ascontiguousarray(em[crop])).save(d / name)
    return root


@pytest.fixture(scope="module")
def label_studio(ls_venv, image_root, tmp_path_factory):
    """A running Label Studio: yields (url, legacy token)."""
    data = tmp_path_factory.mktemp("ls-data")
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
        "LABEL_STUDIO_ML_TIMEOUT_SETUP": "30",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "XDG_CONFIG_HOME": str(data / "config"),
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(image_root),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LOCAL_FILES_DOCUMENT_ROOT", "DJANGO_DB"):
        env.pop(key, None)
    log = data / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(ls_venv / "bin/label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "-p", str(port), "--username", "e2e@example.com", "--password", "e2e-password-123",
             "--user-token", LEGACY_TOKEN],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", proc, log, timeout=300)
        yield url, LEGACY_TOKEN
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ls(label_studio) -> "LS":
    return LS(*label_studio)


class LS:
    """Minimal Label Studio REST client (legacy token auth)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs):
        r = self.s.request(method, self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)
        assert r.status_code < 300, f"{method} {path} -> {r.status_code}: {r.text[:2000]}"
        return r.json() if r.content else None


@pytest.fixture(scope="module")
def backend(ls, tmp_path_factory):
    """``pasam serve`` on a make-test-checkpoint model, downloading images from Label Studio
    with a personal access token (JWT refresh token)."""
    from pasam_plugins.testing import make_test_checkpoint

    d = tmp_path_factory.mktemp("pasam-serve")
    ckpt = make_test_checkpoint(d / "tiny.safetensors", seed=0)
    pat = ls.call("POST", "/api/token/")["token"]
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": pat,
        "DEVICE": "cpu",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # fine-tuning test: tiny runs, models saved next to the test model
        "PASAM_TRAIN_STEPS": "2",
        "PASAM_TRAIN_IMAGES_PER_STEP": "1",
        "PASAM_TRAIN_OBJECTS_PER_IMAGE": "1",
        "PASAM_MODEL_DIR": str(d / "models"),
    }
    for key in ("LOCAL_FILES_DOCUMENT_ROOT", "PASAM_CACHE_DIR", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                "PASAM_SAM_CHECKPOINT", "PASAM_TRAIN_EVERY_N_ANNOTATIONS"):
        env.pop(key, None)
    log = d / "pasam-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pasam_plugins.cli", "serve", "--checkpoint", str(ckpt),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=ROOT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", proc, log, timeout=180)
        yield url, log, ckpt
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def project(ls, backend, image_root):
    """Project + local-files storage + connected ML backend: yields (project id, ml id, tasks)."""
    p = ls.call("POST", "/api/projects", json={"title": "PA-SAM e2e", "label_config": SAM_CONFIG})
    storage = ls.call("POST", "/api/storages/localfiles", json={
        "project": p["id"], "path": str(image_root / "isbi"), "use_blob_urls": True,
        "regex_filter": r".*\.png", "title": "ISBI EM"})
    ls.call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    tasks = ls.call("GET", f"/api/tasks?project={p['id']}&page_size=100")["tasks"]
    assert len(tasks) == 4
    tasks.sort(key=lambda t: t["data"]["image"])
    ml = ls.call("POST", "/api/ml", json={"url": backend[0], "project": p["id"], "title": "PA-SAM",
                                          "is_interactive": True})
    assert ml["state"] == "CO", ml  # connected: /health and /setup answered
    return p["id"], ml, tasks


def image_size(image_root: Path, task: dict) -> tuple[int, int]:
    name = task["data"]["image"].split("?d=")[1]
    with Image.open(image_root / name) as im:
        return im.size  # (width, height)


def decode(region: dict) -> np.ndarray:
    from label_studio_sdk.converter import brush

    h, w = region["original_height"], region["original_width"]
    return brush.decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def metrics(backend) -> dict:
    return requests.get(backend[0] + "/metrics", timeout=10).json()


def test_backend_connects_with_its_model_version(ls, project, backend):
    _, ml, _ = project
    version = metrics(backend)["model_version"]
    assert ml["model_version"] == version
    assert ls.call("GET", f"/api/ml/{ml['id']}")["state"] == "CO"


@pytest.mark.parametrize(
    "kind, region",
    [
        ("keypoint", {"type": "keypointlabels", "from_name": "tag2",
                      "value": {"x": 40.0, "y": 55.0, "width": 0.6, "keypointlabels": ["Cell"]},
                      "is_positive": True}),
        ("rectangle", {"type": "rectanglelabels", "from_name": "tag3",
                       "value": {"x": 20.0, "y": 25.0, "width": 35.0, "height": 30.0, "rotation": 0,
                                 "rectanglelabels": ["Cell"]}}),
    ],
)
def test_interactive_annotating_returns_a_brush_mask_of_the_image_size(
    ls, project, backend, image_root, kind, region
):
    _, ml, tasks = project
    task = tasks[0] if kind == "keypoint" else tasks[1]  # the wide and the tall crop
    width, height = image_size(image_root, task)
    assert width != height
    context = {"result": [{"id": f"{kind}-1", "to_name": "image", "origin": "manual", "image_rotation": 0,
                           "original_width": width, "original_height": height, **region}]}
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": task["id"], "context": context})
    assert "errors" not in answer, answer
    data = answer["data"]
    (brush_region,) = data["result"]
    assert brush_region["type"] == "brushlabels" and brush_region["value"]["brushlabels"] == ["Cell"]
    assert (brush_region["original_width"], brush_region["original_height"]) == (width, height)
    mask = decode(brush_region)
    assert mask.shape == (height, width)
    assert 0.0 <= data["score"] <= 1.0
    assert 0.0 <= brush_region["meta"]["mean_uncertainty"] <= 1.0

    # the mask lines up with the image: the same model here, on the file Label Studio
    # serves, with the prompt in pixels, gives the same mask
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor

    predictor = PASamPredictor(load_model(backend[2]), device="cpu")
    name = task["data"]["image"].split("?d=")[1]
    predictor.set_image(np.asarray(Image.open(image_root / name)))
    v = region["value"]
    if kind == "keypoint":
        ref = predictor.predict(
            point_coords=np.array([[v["x"] / 100 * width - 0.5, v["y"] / 100 * height - 0.5]]),
            point_labels=np.array([1]), multimask_output=True)
    else:
        ref = predictor.predict(box=np.array([
            v["x"] / 100 * width, v["y"] / 100 * height,
            (v["x"] + v["width"]) / 100 * width, (v["y"] + v["height"]) / 100 * height]),
            multimask_output=False)
    inter = np.logical_and(mask, ref.masks[0]).sum()
    union = np.logical_or(mask, ref.masks[0]).sum()
    assert union == 0 or inter / union > 0.99


def test_retrieve_predictions_turns_boxes_into_masks_and_reuses_embeddings(ls, project, backend, image_root):
    pid, ml, tasks = project
    boxes = {tasks[2]["id"]: [(10, 10, 30, 25), (50, 40, 30, 35)], tasks[3]["id"]: [(30, 20, 40, 50)]}
    for tid, rects in boxes.items():
        task = next(t for t in tasks if t["id"] == tid)
        width, height = image_size(image_root, task)
        result = [{"id": f"r{tid}-{i}", "from_name": "tag3", "to_name": "image", "type": "rectanglelabels",
                   "original_width": width, "original_height": height, "image_rotation": 0,
                   "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Cell"]}}
                  for i, (x, y, w, h) in enumerate(rects)]
        ls.call("POST", f"/api/tasks/{tid}/annotations", json={"result": result})
    before = metrics(backend)

    def retrieve():
        r = ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                    json={"selectedItems": {"all": True, "excluded": []}}, timeout=300)
        assert "predictions" in json.dumps(r).lower(), r
        return {p["task"]: p for p in ls.call("GET", f"/api/predictions?project={pid}")}

    preds = retrieve()
    assert set(preds) == {t["id"] for t in tasks}
    version = before["model_version"]
    for task in tasks:
        p = preds[task["id"]]
        assert p["model_version"] == version
        width, height = image_size(image_root, task)
        if task["id"] in boxes:
            assert len(p["result"]) == len(boxes[task["id"]])
            assert p["score"] is not None and 0.0 <= p["score"] <= 1.0
            for region in p["result"]:
                assert region["type"] == "brushlabels"
                assert decode(region).shape == (height, width)
        else:
            assert p["result"] == []  # no prompts: an empty prediction, not an error
    first = metrics(backend)
    # the two batch images were embedded once each (tasks 0 and 1 were embedded interactively)
    assert first["encoder_runs"] == before["encoder_runs"] + 2
    assert first["errors"] == before["errors"]

    # second retrieval: Label Studio skips tasks that already have this model version's
    # predictions; after deleting them everything is predicted again without the encoder
    retrieve()
    ls.call("POST", f"/api/dm/actions?id=delete_tasks_predictions&project={pid}",
            json={"selectedItems": {"all": True, "excluded": []}})
    assert ls.call("GET", f"/api/predictions?project={pid}") == []
    again = retrieve()
    assert set(again) == set(preds)
    for tid, p in again.items():
        assert [r["value"]["rle"] for r in p["result"]] == [r["value"]["rle"] for r in preds[tid]["result"]]
        assert p["score"] == preds[tid]["score"]  # deterministic: same masks, same score
    second = metrics(backend)
    assert second["encoder_runs"] == first["encoder_runs"]
    assert second["embedding_cache"]["hits"] > first["embedding_cache"]["hits"]
    assert second["images"]["downloads"] >= 1  # images came from Label Studio, with the token


def test_start_training_fine_tunes_on_a_brush_annotation_and_serves_a_new_version(
    ls, project, backend, image_root, isbi_dir
):
    """Runs last (it changes the served model): a brush annotation of two ISBI cells on the
    wide crop, "Start Training" in Label Studio, the backend fine-tunes in the background and
    serves (and reports to Label Studio's interactive requests) a new model version."""
    import cv2

    from pasam_plugins.lsformat import mask_to_rle

    pid, ml, tasks = project
    task = tasks[0]  # 0-wide.png: rows 64:448 of section 0
    width, height = image_size(image_root, task)
    label = np.asarray(Image.open(isbi_dir / "label" / "0.png"))[64:448, :] > 128
    n, cc, stats, _ = cv2.connectedComponentsWithStats(label.astype(np.uint8))
    cells = [i for i in range(1, n) if 800 < stats[i, cv2.CC_STAT_AREA] < 6000][:2]
    assert len(cells) == 2 and cc.shape == (height, width)
    result = [{"id": f"cell{i}", "from_name": "tag", "to_name": "image", "type": "brushlabels",
               "original_width": width, "original_height": height, "image_rotation": 0,
               "value": {"format": "rle", "rle": mask_to_rle(cc == c), "brushlabels": ["Cell"]}}
              for i, c in enumerate(cells)]
    ls.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": result})
    before = metrics(backend)
    assert before["training"]["status"] == "idle"

    t0 = time.monotonic()
    ls.call("POST", f"/api/ml/{ml['id']}/train", json={})
    assert time.monotonic() - t0 < 30  # Label Studio waits for the webhook: it answers at once
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        training = metrics(backend)["training"]
        if training["runs"] >= 1 and training["status"] != "running":
            break
        time.sleep(1)
    else:
        pytest.fail(f"fine-tuning did not end within 300 s: {training}\n{tail(backend[1])}")
    assert training["status"] == "done", f"{training}\n{tail(backend[1])}"
    assert training["project"] == pid and training["step"] == 2
    assert training["images"] == 1  # the tasks with rectangle annotations hold no brush region
    new_version = metrics(backend)["model_version"]
    assert new_version != before["model_version"] and training["model_version"] == new_version
    assert Path(training["checkpoint"]).is_file()
    assert Path(training["checkpoint"]).parent == backend[2].parent / "models"

    # Label Studio's next interactive request is answered by the fine-tuned model
    context = {"result": [{"id": "kp-after", "from_name": "tag2", "to_name": "image", "type": "keypointlabels",
                           "origin": "manual", "image_rotation": 0, "original_width": width,
                           "original_height": height, "is_positive": True,
                           "value": {"x": 30.0, "y": 40.0, "width": 0.6, "keypointlabels": ["Cell"]}}]}
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": task["id"], "context": context})
    assert "errors" not in answer, answer
    assert answer["data"]["model_version"] == new_version
    assert metrics(backend)["errors"] == before["errors"]
