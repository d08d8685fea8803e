"""Several backend workers sharing one models directory behave as one backend: a
fine-tuning run started on one worker blocks runs on the others, and when it is done every
worker serves the fine-tuned model (the same masks, the same model version); a restarted
server still serves its --checkpoint, not a model of an earlier session."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from test_labelstudio_training import (  # noqa: F401 - fixtures
    SAM_CONFIG,
    TRAINED,
    cells,
    click,
    fake_ls,
    make_backend,
    start_training,
    wait_until_finished,
)

from label_studio_backend.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def test_two_workers_train_once_and_both_serve_the_result(
    tiny_checkpoint,
    fake_ls,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    a = make_backend(tiny_checkpoint, fake_ls, tmp_path)
    b = make_backend(tiny_checkpoint, fake_ls, tmp_path)  # the same models dir
    ca, cb = TestClient(create_app(a)), TestClient(create_app(b))
    old = a.model_version
    assert b.model_version == old and click(cb)["model_version"] == old

    with a.lock:  # keep a's run going (it swaps its model under this lock at the end)
        r = start_training(ca, TRAINED, label_config=SAM_CONFIG)
        assert r.status_code == 201 and r.json()["status"] == "training started", r.text
        # the other worker's "Start Training" (Label Studio talks to one URL) trains nothing
        other = start_training(cb, TRAINED, label_config=SAM_CONFIG)
        assert other.status_code == 201
        assert other.json() == {"status": "already training", "where": "another worker"}
    status = wait_until_finished(ca)
    assert status["status"] == "done", status
    new = a.model_version
    assert new != old
    assert cb.get("/health").json()["training"]["runs"] == 0  # b never trained

    # b picks the new model up by itself (it checks the announcement at most once a second)
    deadline = time.monotonic() + 30
    while cb.get("/health").json()["model_version"] != new:
        assert time.monotonic() < deadline, "worker b still serves the old model"
        time.sleep(0.3)
    ra, rb = click(ca), click(cb)
    assert ra["model_version"] == rb["model_version"] == new
    assert [x["value"]["rle"] for x in rb["results"][0]["result"]] == [
        x["value"]["rle"] for x in ra["results"][0]["result"]
    ]
    assert cb.post("/setup", json={"project": f"{TRAINED}.1", "schema": SAM_CONFIG}).json() == {
        "model_version": new
    }
    # the run is over: the lock is free for the next one, on any worker
    assert b.trainer._shared.acquire()
    b.trainer._shared.release()

    # a server started after the announcement serves its --checkpoint (as before)
    restarted = make_backend(tiny_checkpoint, fake_ls, tmp_path)
    assert restarted.refresh() is None and restarted.model_version == old


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live child processes of ``pid`` (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError):
            continue
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pasam_serve_with_two_worker_processes_trains_once_and_all_serve_it(
    tiny_checkpoint,
    fake_ls,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    for key in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LOCAL_FILES_DOCUMENT_ROOT", "DEVICE"):
        env.pop(key, None)
    env.update(
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.personal_token,
        PASAM_CACHE_DIR=str(tmp_path / "cache"),
        PASAM_MODEL_DIR=str(tmp_path / "models"),
        PASAM_TRAIN_STEPS="2",
        PASAM_TRAIN_IMAGES_PER_STEP="1",
        PASAM_TRAIN_OBJECTS_PER_IMAGE="1",
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pasam_plugins.cli", "serve", "--checkpoint",
             str(tiny_checkpoint), "--host", "127.0.0.1", "--port", str(port), "--device",
             "cpu", "--workers", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def get(path: str) -> dict:  # a new connection each time: any worker may answer
        return httpx.get(url + path, timeout=30, headers={"Connection": "close"}).json()

    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                old = get("/health")["model_version"]
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(1)
        # two worker processes, each with its model, behind the one port
        deadline = time.monotonic() + 300
        while log.read_text().count("worker ") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(1)
        workers = {pid for pid, cmd in _children(proc.pid).items() if "spawn_main" in cmd}
        assert len(workers) == 2, _children(proc.pid)

        webhook = {"action": "START_TRAINING", "project": {"id": TRAINED}}
        first = httpx.post(url + "/webhook", json=webhook, timeout=30).json()
        assert first["status"] == "training started", first
        second = httpx.post(url + "/webhook", json=webhook, timeout=30).json()
        assert second["status"] == "already training", second  # on either worker

        # the worker that trained reports the new version; then every answer shows it
        deadline = time.monotonic() + 600
        new = None
        while new is None:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            training = get("/health").get("training") or {}
            assert training.get("status") != "failed", training
            if training.get("status") == "done":
                new = training["model_version"]
            time.sleep(0.5)
        assert new != old
        time.sleep(1.5)  # each worker looks for a new model at most once a second
        for _ in range(12):
            assert get("/health")["model_version"] == new
        # the answers come from the worker processes (not from the supervisor)
        assert {get("/metrics")["pid"] for _ in range(12)} <= workers
        saved = list((tmp_path / "models").glob("*.safetensors"))
        assert len(saved) == 1, saved  # fine-tuned once
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_each_worker_takes_its_own_device_and_a_restarted_one_takes_the_freed_slot(tmp_path):
    from label_studio_backend.shared import claim_device, device_list

    devices = device_list("cuda:0, cuda:1")
    assert devices == ["cuda:0", "cuda:1"] and device_list("cuda:1") is None
    first, second = claim_device(devices, tmp_path), claim_device(devices, tmp_path)
    assert (first.device, second.device) == ("cuda:0", "cuda:1")
    with pytest.raises(RuntimeError, match="start at most 2 workers"):
        claim_device(devices, tmp_path)
    first.release()  # (a worker that died: its lock went with it)
    assert claim_device(devices, tmp_path).device == "cuda:0"


def test_a_device_list_needs_one_worker_per_device(tiny_checkpoint, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from label_studio_backend.cli import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    cli = typer.Typer()
    cli.command()(serve)
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu,cpu", "--workers", "3"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "start one worker per device (--workers 2)" in res.output
