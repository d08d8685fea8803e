"""End to end with a real Label Studio 1.23.2 and ``pasam serve``, driven through Label
Studio's REST API the way its frontend does (the fixtures are in ``conftest.py``).

A stock Label Studio with the one setting the README documents
(``LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false``), a project with the usual interactive SAM
config on ISBI EM sections (non-square crops, local-files storage), and the backend serving
a random-weight model used zoomed in (as this project's small model) connected as "Connect
Model" does. Checked as a team meets it: the model's card is named after the served version
and the project scores its predictions with no manual step; interactive keypoint and
rectangle requests give the core's masks; "Retrieve predictions" scores and sorts tasks in
the Data Manager right away, stores nothing for tasks without prompts (so a later box gets
predicted) and no empty regions; uploaded images download without retry noise in the log;
"Start Training" shows its progress on the model's card and ends on a new version, and
training again on unchanged annotations makes no new version or file; and a Label Studio
without the documented setting refuses the backend. (That backend runs with automatic
pre-annotation off; a second one, started without a checkpoint, serves the shipped
pasam_micro: a box on a cell of a held-out EM section must give a mask overlapping the
cell's ground truth, and a task without prompts is pre-annotated with every object.)

Run: ``pytest -m integration tests/integration/`` (minutes: installing Label Studio the first
time, its first start with migrations, a few tiny fine-tuning steps).
"""

import json
import time

import numpy as np
import pytest
import requests
from lsrun import (
    LS,
    SAM_CONFIG,
    decode,
    image_size,
    metrics,
    served_version,
    start_label_studio,
    stop,
    tail,
    wait_for,
)
from PIL import Image

# installing Label Studio (first run) and its first start take minutes: no per-test timeout
# from the command line may cut the session fixtures short
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def project(ls, backend, image_root):
    """(project id, ML backend, tasks sorted by image name: 0-wide, 1-tall, 2-full, 3-wide)."""
    pid, ml, tasks = ls.new_project("PA-SAM e2e", image_root / "isbi", backend[0])
    assert len(tasks) == 4
    return pid, ml, tasks


def rectangles(task: dict, image_root, rects, prefix: str) -> list[dict]:
    width, height = image_size(image_root, task)
    return [
        {
            "id": f"{prefix}{task['id']}-{i}",
            "from_name": "tag3",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "x": x,
                "y": y,
                "width": w,
                "height": h,
                "rotation": 0,
                "rectanglelabels": ["Cell"],
            },
        }
        for i, (x, y, w, h) in enumerate(rects)
    ]


def retrieve(ls: LS, pid: int, task_ids: list[int] | None = None) -> dict[int, dict]:
    """Data Manager -> Actions -> Retrieve Predictions (all tasks, or the ones given);
    returns every prediction of the project by task."""
    selected = (
        {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
    )
    r = ls.call(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
        json={"selectedItems": selected},
        timeout=600,
    )
    assert "predictions" in json.dumps(r).lower(), r
    return {p["task"]: p for p in ls.call("GET", f"/api/predictions?project={pid}")}


def test_connect_names_the_model_after_its_version_and_the_project_scores_it(ls, project, backend):
    pid, ml, _ = project
    version = served_version(backend[0])
    assert ml["model_version"] == version
    # no manual step: the card takes the version's name and the project's model version
    # (what the Data Manager scores) follows it
    ls.wait_until(
        "the project scores the served version",
        lambda: ls.call("GET", f"/api/projects/{pid}")["model_version"] == version,
    )
    card = ls.call("GET", f"/api/ml/{ml['id']}")
    assert card["title"] == version and card["state"] == "CO"


@pytest.mark.parametrize(
    "kind, region",
    [
        (
            "keypoint",
            {
                "type": "keypointlabels",
                "from_name": "tag2",
                "value": {"x": 40.0, "y": 55.0, "width": 0.6, "keypointlabels": ["Cell"]},
                "is_positive": True,
            },
        ),
        (
            "rectangle",
            {
                "type": "rectanglelabels",
                "from_name": "tag3",
                "value": {
                    "x": 20.0,
                    "y": 25.0,
                    "width": 35.0,
                    "height": 30.0,
                    "rotation": 0,
                    "rectanglelabels": ["Cell"],
                },
            },
        ),
    ],
)
def test_interactive_annotating_returns_the_cores_mask(
    ls, project, backend, image_root, kind, region
):
    _, ml, tasks = project
    task = tasks[0] if kind == "keypoint" else tasks[1]  # the wide and the tall crop
    width, height = image_size(image_root, task)
    assert width != height
    context = {
        "result": [
            {
                "id": f"{kind}-1",
                "to_name": "image",
                "origin": "manual",
                "image_rotation": 0,
                "original_width": width,
                "original_height": height,
                **region,
            }
        ]
    }
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": context},
    )
    assert "errors" not in answer, answer
    data = answer["data"]
    assert 0.0 <= data["score"] <= 1.0

    # the same model, through the core, on the file Label Studio serves, with the prompt in
    # pixels: the same mask
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor
    from pasam_plugins.segment import Segmenter

    # as `pasam serve` runs it by default: the fast encoder path, precision auto
    core = Segmenter(
        PASamPredictor(load_model(backend[2]), device="cpu", precision="auto", fast_encoder=True)
    )
    assert core.zoom is not None
    core.set_image(np.asarray(Image.open(image_root / task["data"]["image"].split("?d=")[1])))
    v = region["value"]
    if kind == "keypoint":
        ref = core.segment([[v["x"] / 100 * width - 0.5, v["y"] / 100 * height - 0.5]], [1])
    else:
        ref = core.segment(
            box=[
                v["x"] / 100 * width,
                v["y"] / 100 * height,
                (v["x"] + v["width"]) / 100 * width,
                (v["y"] + v["height"]) / 100 * height,
            ]
        )
    if ref.empty:
        assert data["result"] == []  # an empty mask is no region
        return
    (brush,) = data["result"]
    assert brush["type"] == "brushlabels" and brush["value"]["brushlabels"] == ["Cell"]
    assert (brush["original_width"], brush["original_height"]) == (width, height)
    np.testing.assert_array_equal(decode(brush), ref.mask)
    assert 0.0 <= brush["meta"]["mean_uncertainty"] <= 1.0


def test_retrieve_predictions_scores_and_sorts_tasks_right_away(ls, project, backend, image_root):
    pid, ml, tasks = project
    boxes = {
        tasks[2]["id"]: [(10, 10, 30, 25), (50, 40, 30, 35)],
        tasks[3]["id"]: [(30, 20, 40, 50)],
    }
    for tid, rects in boxes.items():
        task = next(t for t in tasks if t["id"] == tid)
        ls.call(
            "POST",
            f"/api/tasks/{tid}/annotations",
            json={"result": rectangles(task, image_root, rects, "r")},
        )
    version = served_version(backend[0])
    before = metrics(backend[0])

    preds = retrieve(ls, pid)
    # tasks without boxes or keypoints get no prediction (an empty one would block them later)
    assert set(preds) == set(boxes)
    for tid, p in preds.items():
        task = next(t for t in tasks if t["id"] == tid)
        width, height = image_size(image_root, task)
        assert p["model_version"] == version
        assert p["score"] is not None and 0.0 <= p["score"] <= 1.0
        assert len(p["result"]) <= len(boxes[tid])
        for region in p["result"]:  # no stray empty regions
            assert region["type"] == "brushlabels"
            mask = decode(region)
            assert mask.shape == (height, width) and mask.any()
    first = metrics(backend[0])
    assert first["errors"] == before["errors"]
    assert first["encoder_runs"] > before["encoder_runs"]

    # the Data Manager, right after: every predicted task scored, sortable by the score
    dm = ls.scored_tasks(pid)
    scored = [t for t in dm if t.get("predictions_score") is not None]
    assert {t["id"] for t in scored} == set(boxes)
    assert [t["predictions_score"] for t in scored] == sorted(
        t["predictions_score"] for t in scored
    )
    for t in scored:
        assert t["predictions_score"] == pytest.approx(preds[t["id"]]["score"], abs=1e-6)

    # a task that had no prompts gets a box: the next run predicts it (and only it)
    ls.call(
        "POST",
        f"/api/tasks/{tasks[0]['id']}/annotations",
        json={"result": rectangles(tasks[0], image_root, [(30, 30, 25, 30)], "late")},
    )
    calls = metrics(backend[0])["batch_requests"]
    again = retrieve(ls, pid)
    assert set(again) == set(boxes) | {tasks[0]["id"]}
    assert metrics(backend[0])["batch_requests"] == calls + 1
    assert [t["id"] for t in ls.scored_tasks(pid) if t.get("predictions_score") is not None].count(
        tasks[0]["id"]
    ) == 1

    # everything predicted again after deleting the predictions: the same masks and scores,
    # without the image encoder (the zoomed windows' embeddings are cached)
    runs = metrics(backend[0])["encoder_runs"]
    ls.call(
        "POST",
        f"/api/dm/actions?id=delete_tasks_predictions&project={pid}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    third = retrieve(ls, pid)
    assert set(third) == set(again)
    for tid, p in third.items():
        assert [r["value"]["rle"] for r in p["result"]] == [
            r["value"]["rle"] for r in again[tid]["result"]
        ]
        assert p["score"] == again[tid]["score"]
    last = metrics(backend[0])
    assert last["encoder_runs"] == runs
    assert last["embedding_cache"]["hits"] > first["embedding_cache"]["hits"]


def test_uploaded_images_are_downloaded_without_retry_noise(ls, project, backend, isbi_dir):
    """An image uploaded to Label Studio (the quick start's way) is downloaded with the
    personal access token; the SDK's proxy-URL retry is not logged for every download."""
    pid, _, _ = project
    png = (isbi_dir / "image" / "7.png").read_bytes()
    imported = ls.call(
        "POST", f"/api/projects/{pid}/import", files={"file": ("upload7.png", png, "image/png")}
    )
    tid = imported.get("task_ids", [None])[0] if isinstance(imported, dict) else None
    if tid is None:
        tid = max(
            t["id"] for t in ls.call("GET", f"/api/tasks?project={pid}&page_size=100")["tasks"]
        )
    task = ls.call("GET", f"/api/tasks/{tid}")
    assert task["data"]["image"].startswith("/data/upload/"), task["data"]
    result = [
        {
            "id": "up-1",
            "from_name": "tag3",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 512,
            "original_height": 512,
            "image_rotation": 0,
            "value": {
                "x": 20,
                "y": 20,
                "width": 30,
                "height": 30,
                "rotation": 0,
                "rectanglelabels": ["Cell"],
            },
        }
    ]
    ls.call("POST", f"/api/tasks/{tid}/annotations", json={"result": result})
    downloads = metrics(backend[0])["images"]["downloads"]
    preds = retrieve(ls, pid, [tid])
    assert tid in preds and preds[tid]["score"] is not None, tail(backend[1])
    assert metrics(backend[0])["images"]["downloads"] == downloads + 1
    log = backend[1].read_text(errors="replace")
    for noise in ("Download failed for proxy URL", "File downloaded to", "Storage proxy file"):
        assert noise not in log


def test_start_training_shows_progress_on_the_card_then_serves_a_new_version(
    ls, project, backend, image_root, isbi_dir
):
    """A brush annotation of two ISBI cells on the wide crop, "Start Training" in Label
    Studio: the backend answers at once, the model's card reads the step while it trains,
    then the new version (and the project scores it); Label Studio's next requests are
    answered by the new model."""
    import cv2

    from pasam_plugins.lsformat import mask_region

    pid, ml, tasks = project
    task = tasks[0]  # 0-wide.png: rows 64:448 of section 0
    width, height = image_size(image_root, task)
    label = np.asarray(Image.open(isbi_dir / "label" / "0.png"))[64:448, :] > 128
    n, cc, stats, _ = cv2.connectedComponentsWithStats(label.astype(np.uint8))
    cells = [i for i in range(1, n) if 800 < stats[i, cv2.CC_STAT_AREA] < 6000][:2]
    assert len(cells) == 2 and cc.shape == (height, width)
    result = [
        mask_region(cc == c, label="Cell", from_name="tag", to_name="image", region_id=f"cell{i}")
        for i, c in enumerate(cells)
    ]
    ls.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": result})
    before = metrics(backend[0])
    old = before["model_version"]
    assert before["training"]["status"] == "idle"

    t0 = time.monotonic()
    ls.call("POST", f"/api/ml/{ml['id']}/train", json={})
    assert time.monotonic() - t0 < 30  # Label Studio waits for the webhook: it answers at once
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        training = metrics(backend[0])["training"]
        if training["runs"] >= 1 and training["status"] != "running":
            break
        time.sleep(1)
    else:
        pytest.fail(f"fine-tuning did not end within 600 s: {training}\n{tail(backend[1])}")
    assert training["status"] == "done", f"{training}\n{tail(backend[1])}"
    assert training["project"] == pid and training["step"] == 3
    assert training["images"] == 1  # the tasks with rectangle annotations hold no brush region
    new = metrics(backend[0])["model_version"]
    assert new != old and training["model_version"] == new
    # (next to it: the workers' lock file and current.json announcing the model, issue 19)
    saved = sorted(backend[3].glob("*.safetensors"))
    assert [p.name for p in saved] == [f"labelstudio-project{pid}-{new}.safetensors"]
    assert training["checkpoint"] == str(saved[0])

    # where a Label Studio user looks: the model's card (Settings -> Model) read the step,
    # and now names the new version; the project scores the new version's predictions
    ls.wait_until(
        "the card names the new version",
        lambda: ls.call("GET", f"/api/ml/{ml['id']}")["title"] == new,
    )
    ls.wait_until(
        "the project scores the new version",
        lambda: ls.call("GET", f"/api/projects/{pid}")["model_version"] == new,
    )
    sync = metrics(backend[0])["label_studio_sync"]
    shown = [h["title"] for h in sync["history"] if h["project"] == pid and "error" not in h]
    assert any(t.startswith(f"{old} (fine-tuning: step") for t in shown), shown

    # Label Studio's next interactive request is answered by the fine-tuned model, and
    # "Retrieve predictions" predicts every prompted task again under the new version
    context = {
        "result": [
            {
                "id": "kp-after",
                "from_name": "tag2",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
                "image_rotation": 0,
                "original_width": width,
                "original_height": height,
                "is_positive": True,
                "value": {"x": 30.0, "y": 40.0, "width": 0.6, "keypointlabels": ["Cell"]},
            }
        ]
    }
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": context},
    )
    assert "errors" not in answer, answer
    assert answer["data"]["model_version"] == new
    preds = [
        p for p in ls.call("GET", f"/api/predictions?project={pid}") if p["model_version"] == old
    ]
    retrieve(ls, pid)
    fresh = [
        p for p in ls.call("GET", f"/api/predictions?project={pid}") if p["model_version"] == new
    ]
    assert {p["task"] for p in fresh} == {p["task"] for p in preds}
    scored = [t for t in ls.scored_tasks(pid) if t.get("predictions_score") is not None]
    assert {t["id"] for t in scored} == {p["task"] for p in fresh}
    assert metrics(backend[0])["errors"] == before["errors"]


def test_training_again_on_unchanged_annotations_makes_no_new_version(ls, project, backend):
    pid, ml, _ = project
    version = served_version(backend[0])
    files = sorted(p.name for p in backend[3].iterdir())
    runs = metrics(backend[0])["training"]["runs"]
    ls.call("POST", f"/api/ml/{ml['id']}/train", json={})
    training = ls.wait_until(
        "the second run ends",
        lambda: (
            (t := metrics(backend[0])["training"])["runs"] > runs and t["status"] != "running" and t
        ),
    )
    assert training["status"] == "done" and training["unchanged"] is True
    assert training["model_version"] == version == served_version(backend[0])
    assert sorted(p.name for p in backend[3].iterdir()) == files
    # the card says so (until the next batch prediction)
    ls.wait_until(
        "the card notes the unchanged annotations",
        lambda: "annotations unchanged" in ls.call("GET", f"/api/ml/{ml['id']}")["title"],
    )


def test_label_studio_without_the_documented_setting_refuses_the_backend(
    ls_venv, label_studio, image_root, backend
):
    """Why the README's setting is needed: Label Studio 1.23.2 refuses an ML backend on a
    loopback address, even with LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false (connecting also
    registers the backend's /webhook, which the general SSRF guard checks)."""
    _, token, data = label_studio
    proc, url, log = start_label_studio(
        ls_venv,
        data,
        image_root,
        extra_env={"LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false"},
        create_user=False,
    )
    try:
        wait_for(f"{url}/health", proc, log, timeout=600)
        other = LS(url, token)
        p = other.call(
            "POST", "/api/projects", json={"title": "stock SSRF guard", "label_config": SAM_CONFIG}
        )
        r = other.call(
            "POST",
            "/api/ml",
            expect_error=True,
            json={"url": backend[0], "project": p["id"], "title": "PA-SAM"},
        )
        assert r.status_code in (400, 403), r.text
        assert "reserved network address" in r.text
    finally:
        stop(proc)
    assert requests.get(backend[0] + "/health", timeout=10).status_code == 200


def test_shipped_model_segments_a_held_out_cell_and_pre_annotates_every_object(
    ls, shipped_backend, image_root, isbi_dir
):
    """Issue 10 in Label Studio: ``pasam serve`` without a checkpoint serves the shipped
    pasam_micro; a box on a cell of a held-out EM section (test split) gives a brush mask
    overlapping that cell's ground truth (IoU >= 0.5). Issue 17 through the real Label
    Studio: "Retrieve predictions" on the task, which has no prompts and no annotation,
    stores every object the model finds, scored."""
    from scipy import ndimage

    from pasam_plugins.metrics import mask_iou

    url, log = shipped_backend
    assert "shipped model" in log.read_text(errors="replace")
    pid, ml, (task,) = ls.new_project("PA-SAM shipped model", image_root / "heldout", url)
    width, height = image_size(image_root, task)
    cells, _ = ndimage.label(np.asarray(Image.open(isbi_dir / "label" / "25.png")) > 127)
    assert cells.shape == (height, width)
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    gt = cells == ids[np.argsort(counts)[len(counts) // 2]]  # a median-sized cell
    ys, xs = np.nonzero(gt)
    x0, y0 = max(0, xs.min() - 2), max(0, ys.min() - 2)
    x1, y1 = min(width, xs.max() + 3), min(height, ys.max() + 3)
    box = {
        "id": "cell-box",
        "from_name": "tag3",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "image_rotation": 0,
        "original_width": width,
        "original_height": height,
        "value": {
            "x": x0 / width * 100,
            "y": y0 / height * 100,
            "width": (x1 - x0) / width * 100,
            "height": (y1 - y0) / height * 100,
            "rotation": 0,
            "rectanglelabels": ["Cell"],
        },
    }
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [box]}},
    )
    assert "errors" not in answer, answer
    (brush,) = answer["data"]["result"]
    mask = decode(brush)
    assert mask.shape == gt.shape
    assert mask_iou(mask, gt) >= 0.5, (mask_iou(mask, gt), tail(log))

    # no prompts, no annotation: every object (interactive answers are not stored)
    version = served_version(url)
    preds = retrieve(ls, pid)
    assert set(preds) == {task["id"]}, tail(log)
    p = preds[task["id"]]
    assert p["model_version"] == version and 0.0 <= p["score"] <= 1.0
    assert len(p["result"]) >= 1
    for region in p["result"]:
        assert region["type"] == "brushlabels" and decode(region).any()
        assert 0.0 <= region["score"] <= 1.0 and "review_rank" in region["meta"]
