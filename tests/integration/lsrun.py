"""Running a real Label Studio 1.23.2 and ``pasam serve`` for the integration tests.

Label Studio is installed once into its own cached venv by ``scripts/install_labelstudio.sh``
(``${PASAM_LS_VENV:-~/.cache/pasam/ls-venv}``) and started on 127.0.0.1 with a fresh data
dir and the one SSRF setting the backend's README documents
(``LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false``); the fixtures are in ``conftest.py``.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "e2e@example.com", "e2e-password-123"
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
#: what the backend's README tells teams to set on a stock Label Studio (an ML backend on a
#: loopback or private address is refused otherwise)
SSRF_SETTING = {"LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(log: Path, n: int = 60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


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


def start_label_studio(
    venv: Path, data: Path, files_root: Path, *, extra_env: dict[str, str], create_user: bool = True
) -> tuple[subprocess.Popen, str, Path]:
    """``label-studio start`` on a free port: returns (process, url, log). The caller stops
    it with :func:`stop` after :func:`wait_for` ``url + "/health"``."""
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_ML_TIMEOUT_SETUP": "30",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "XDG_CONFIG_HOME": str(data / "config"),
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    for key in (
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_API_KEY",
        "LOCAL_FILES_DOCUMENT_ROOT",
        "DJANGO_DB",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP",
        "ML_BLOCK_LOCAL_IP",
        "SSRF_PROTECTION_ENABLED",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED",
        "USE_DEFAULT_BANNED_SUBNETS",
    ):
        if key not in extra_env:
            env.pop(key, None)
    args = [
        str(venv / "bin/label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    if create_user:
        args += ["--username", USER, "--password", PASSWORD, "--user-token", LEGACY_TOKEN]
    log = data / f"label-studio-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data,
        )
    return proc, f"http://127.0.0.1:{port}", log


class LS:
    """Minimal Label Studio REST client (legacy token auth)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, *, expect_error: bool = False, **kwargs):
        r = self.s.request(method, self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)
        if expect_error:
            return r
        assert r.status_code < 300, f"{method} {path} -> {r.status_code}: {r.text[:2000]}"
        return r.json() if r.content else None

    def wait_until(self, what: str, check, timeout: float = 60.0):
        """Poll ``check()`` until it returns a true value (returned); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.5)
        pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")

    def new_project(
        self, title: str, storage_dir: Path, backend_url: str
    ) -> tuple[int, dict, list]:
        """A project on the SAM config, its images from local-files storage, the backend
        connected as Label Studio's "Connect Model" does: (project id, ML backend, tasks)."""
        p = self.call("POST", "/api/projects", json={"title": title, "label_config": SAM_CONFIG})
        storage = self.call(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": p["id"],
                "path": str(storage_dir),
                "use_blob_urls": True,
                "regex_filter": r".*\.png",
                "title": "images",
            },
        )
        self.call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
        tasks = self.call("GET", f"/api/tasks?project={p['id']}&page_size=100")["tasks"]
        tasks.sort(key=lambda t: t["data"]["image"])
        ml = self.call(
            "POST",
            "/api/ml",
            json={
                "url": backend_url,
                "project": p["id"],
                "title": "PA-SAM",
                "is_interactive": True,
            },
        )
        assert ml["state"] == "CO", ml  # connected: /health and /setup answered
        return p["id"], ml, tasks

    def scored_tasks(self, project: int) -> list[dict]:
        """The Data Manager's task list sorted by "Prediction score", ascending (the least
        certain first), as the column header sorts it."""
        import json

        query = json.dumps({"ordering": ["tasks:predictions_score"]})
        body = self.call(
            "GET",
            "/api/tasks",
            params={"project": project, "fields": "all", "page_size": 100, "query": query},
        )
        return body["tasks"]


def image_size(image_root: Path, task: dict) -> tuple[int, int]:
    name = task["data"]["image"].split("?d=")[1]
    with Image.open(image_root / name) as im:
        return im.size  # (width, height)


def decode(region: dict) -> np.ndarray:
    from pasam_plugins.lsformat import region_mask

    return region_mask(region)


def metrics(backend_url: str) -> dict:
    return requests.get(backend_url + "/metrics", timeout=10).json()


def served_version(backend_url: str) -> str:
    return requests.get(backend_url + "/health", timeout=10).json()["model_version"]
