"""Helpers for the Label Studio backend tests: labeling configs, task/region builders, test
images and a fake in-process Label Studio (token refresh, image downloads, annotated tasks)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

SAM_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cell" background="#FF0000"/>
    <Label value="Membrane" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Cell" smart="true" background="#000000" showInline="true"/>
    <Label value="Membrane" smart="true" background="#000000" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Cell" background="#000000" showInline="true"/>
    <Label value="Membrane" background="#000000" showInline="true"/>
  </RectangleLabels>
</View>"""

#: one brush label, prompt labels with other names map to it
SINGLE_LABEL_CONFIG = """<View>
  <Image name="img" value="$url"/>
  <BrushLabels name="mask" toName="img"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="click" toName="img" smart="true"><Label value="Here"/></KeyPointLabels>
  <RectangleLabels name="det" toName="img"><Label value="Detected"/></RectangleLabels>
</View>"""


def keypoint(x: float, y: float, *, label: str = "Cell", positive: bool = True, rid: str = "kp",
             from_name: str = "tag2", width: int = 512, height: int = 512) -> dict:
    """A KeyPointLabels region at (x, y) percent, as Label Studio's frontend sends it."""
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
    }


def rectangle(x: float, y: float, w: float, h: float, *, label: str = "Cell", rid: str = "box",
              from_name: str = "tag3", rotation: float = 0, width: int = 512,
              height: int = 512) -> dict:
    """A RectangleLabels region in percent."""
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                  "rectanglelabels": [label]},
    }


def brush(mask: np.ndarray, *, label: str = "Cell", rid: str = "br", from_name: str = "tag") -> dict:
    """A BrushLabels region (Label Studio RLE) of an HxW mask, as stored in an annotation."""
    from pasam_plugins.lsformat import mask_to_rle

    h, w = mask.shape
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


def predict_body(tasks: list, *, context: list | None = None, config: str = SAM_CONFIG,
                 project: str = "1.1700000000") -> dict:
    """A /predict request as Label Studio sends it."""
    return {
        "tasks": tasks,
        "project": project,
        "label_config": config,
        "params": {"login": None, "password": None,
                   "context": {"result": context} if context is not None else None},
    }


def write_test_images(root: Path, em: np.ndarray) -> dict[str, str]:
    """Write test images under a local-files root; returns name -> /data/local-files URL."""
    d = root / "imgs"
    d.mkdir(parents=True, exist_ok=True)
    urls = {}

    def save(name: str, arr: np.ndarray, **kw) -> None:
        Image.fromarray(arr).save(d / name, **kw)
        urls[name] = f"/data/local-files/?d=imgs/{name}"

    save("em.png", em)  # 512x512 uint8 gray
    save("wide.png", np.ascontiguousarray(em[96:416, :]))  # 512 wide x 320 high
    save("tall.png", np.ascontiguousarray(em[:, 128:448]))  # 320 wide x 512 high
    em16 = (em.astype(np.uint16) * 257 + 3).astype(np.uint16)
    Image.fromarray(em16).save(d / "em16.png")
    urls["em16.png"] = "/data/local-files/?d=imgs/em16.png"
    rgba = np.dstack([em, em, em, np.full_like(em, 200)])
    save("rgba.png", rgba)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    urls["corrupt.png"] = "/data/local-files/?d=imgs/corrupt.png"
    return urls


def decode_brush(region: dict) -> np.ndarray:
    """A brushlabels region -> HxW bool mask (label-studio-sdk's decoder)."""
    from label_studio_sdk.converter import brush

    h, w = region["original_height"], region["original_width"]
    flat = brush.decode_rle(region["value"]["rle"])
    return flat.reshape(h, w, 4)[..., 3] > 0


def make_jwt(token_type: str, *, lifetime: float = 3600, secret: str = "fake-label-studio-secret-key-0123456789") -> str:
    import jwt

    now = int(time.time())
    return jwt.encode(
        {"token_type": token_type, "exp": now + int(lifetime), "iat": now, "jti": f"{token_type}{now}",
         "user_id": "1"},
        secret,
        algorithm="HS256",
    )


class FakeLabelStudio:
    """A tiny Label Studio stand-in on 127.0.0.1: ``POST /api/token/refresh/`` (personal access
    token -> access token), uploads at ``/storage-data/uploaded/?filepath=upload/1/NAME`` and
    ``/data/upload/1/NAME``, local-files at ``/data/local-files/?d=NAME``, cloud storage at
    ``/tasks/ID/presign/?fileuri=base64(s3://bucket/NAME)``, plus ``/redirect-out``
    (302 to another host), ``/slow`` (never finishes) and ``/huge`` (endless bytes).
    For fine-tuning: ``/api/projects/ID/`` (``projects[ID]``, e.g. its ``label_config``) and
    the Data Manager's ``/api/tasks?project=ID&fields=all&page=&page_size=`` (``tasks[ID]``,
    a list of task dicts with annotations). For the model-version sync, Label Studio 1.23's
    rules: ``GET /api/ml?project=ID`` (``ml_backends``; ``on_list_ml(backend)`` runs first for
    each, as Label Studio asks each backend's /setup), ``PATCH /api/ml/ID`` (needs ``url`` and
    ``project``; a project whose model version is the old title follows the new one) and
    ``PATCH /api/projects/ID/`` with a ``model_version`` that is a backend's title or has
    predictions (``prediction_versions[ID]``), else HTTP 400."""

    def __init__(self, files: dict[str, bytes], *, legacy_token: str = "legacy-token-123",
                 personal_token: str | None = None) -> None:
        self.files = files
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, list[dict]] = {}
        self.ml_backends: dict[int, dict] = {}
        self.prediction_versions: dict[int, set[str]] = {}
        self.on_list_ml = None
        self.patches: list[tuple[str, dict]] = []
        self.legacy_token = legacy_token
        self.personal_token = personal_token or make_jwt("refresh")
        self.access_tokens: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self.refreshes = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization") or ""
                if auth == f"Token {fake.legacy_token}":
                    return True
                return auth.startswith("Bearer ") and auth[7:] in fake.access_tokens

            def do_PATCH(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                fake.requests.append(("PATCH", self.path, self.headers.get("Authorization")))
                fake.patches.append((self.path, body))
                if not self._authorized():
                    return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                parts = urlparse(self.path).path.strip("/").split("/")
                if parts[:2] == ["api", "ml"] and len(parts) == 3 and parts[2].isdigit():
                    ml = fake.ml_backends.get(int(parts[2]))
                    if ml is None:
                        return self._send(404, b'{"detail": "Not found."}')
                    if "url" not in body or "project" not in body:  # as Label Studio 1.23
                        return self._send(500, b'{"detail": "healthcheck_() missing url"}')
                    old = ml["title"]
                    ml.update({k: v for k, v in body.items() if k in ("title", "url")})
                    project = fake.projects.setdefault(ml["project"], {})
                    if project.get("model_version") == old:
                        project["model_version"] = ml["title"]
                    return self._send(200, json.dumps(ml).encode())
                if parts[:2] == ["api", "projects"] and len(parts) == 3 and parts[2].isdigit():
                    pid = int(parts[2])
                    project = fake.projects.get(pid)
                    if project is None:
                        return self._send(404, b'{"detail": "Not found."}')
                    version = body.get("model_version")
                    if version is not None and version != project.get("model_version") and version:
                        titles = {b["title"] for b in fake.ml_backends.values() if b["project"] == pid}
                        if version not in titles | fake.prediction_versions.get(pid, set()):
                            return self._send(400, json.dumps({"validation_errors": {"model_version": [
                                "Model version doesn't exist either as live model or as static predictions."
                            ]}}).encode())
                    project.update(body)
                    return self._send(200, json.dumps({"id": pid, **project}).encode())
                self._send(404, b"{}")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                if self.path.rstrip("/") == "/api/token/refresh":
                    if body.get("refresh") != fake.personal_token:
                        return self._send(401, b'{"detail": "Token is invalid"}')
                    access = make_jwt("access", lifetime=300)
                    fake.access_tokens.add(access)
                    fake.refreshes += 1
                    return self._send(200, json.dumps({"access": access}).encode())
                self._send(404, b"{}")

            def do_GET(self):
                fake.requests.append(("GET", self.path, self.headers.get("Authorization")))
                p = urlparse(self.path)
                q = parse_qs(p.query)
                if p.path == "/redirect-out":
                    return self._send(302, b"", headers={"Location": "http://169.254.169.254/x.png"})
                if p.path == "/slow":
                    time.sleep(30)
                    return self._send(200, b"late")
                if p.path == "/huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    try:
                        for _ in range(10_000):
                            self.wfile.write(b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if not self._authorized():
                    return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                if p.path.rstrip("/") == "/api/ml":
                    pid = int((q.get("project") or ["0"])[0])
                    items = [b for b in fake.ml_backends.values() if b["project"] == pid]
                    for b in items:
                        if fake.on_list_ml is not None:
                            fake.on_list_ml(b)
                    return self._send(200, json.dumps(items).encode())
                if p.path.startswith("/api/projects/"):
                    pid = p.path.strip("/").split("/")[-1]
                    project = fake.projects.get(int(pid)) if pid.isdigit() else None
                    if project is None:
                        return self._send(404, b'{"detail": "Not found."}')
                    return self._send(200, json.dumps({"id": int(pid), **project}).encode())
                if p.path.rstrip("/") == "/api/tasks":
                    tasks = fake.tasks.get(int((q.get("project") or ["0"])[0]), [])
                    tasks = _data_manager_query(tasks, json.loads((q.get("query") or ["{}"])[0]))
                    if (q.get("fields") or [""])[0] != "all":
                        tasks = [{k: v for k, v in t.items() if k != "annotations"} for t in tasks]
                    page, size = int((q.get("page") or [1])[0]), int((q.get("page_size") or [100])[0])
                    chunk = tasks[(page - 1) * size: page * size]
                    if page > 1 and not chunk:
                        return self._send(404, b'{"detail": "Invalid page."}')
                    return self._send(200, json.dumps({"tasks": chunk, "total": len(tasks)}).encode())
                name = None
                if p.path.startswith("/storage-data/uploaded"):
                    name = (q.get("filepath") or [""])[0].removeprefix("upload/1/")
                elif p.path.startswith("/data/upload/1/"):
                    name = p.path.removeprefix("/data/upload/1/")
                elif p.path.rstrip("/") == "/data/local-files":
                    name = (q.get("d") or [""])[0]
                elif p.path.startswith("/tasks/") and p.path.rstrip("/").endswith("/presign"):
                    import base64

                    uri = base64.urlsafe_b64decode((q.get("fileuri") or [""])[0]).decode()
                    name = uri.removeprefix("s3://bucket/")
                if name in fake.files:
                    return self._send(200, fake.files[name], "image/png")
                self._send(404, b'{"detail": "Not found"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeLabelStudio":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _data_manager_query(tasks: list[dict], query: dict) -> list[dict]:
    """The Data Manager's ``query`` on a project's tasks, as far as the backend uses it:
    "greater than" filters on the task id and the number of annotations, id ordering."""
    columns = {
        "filter:tasks:id": lambda t: t["id"],
        "filter:tasks:total_annotations": lambda t: len(t.get("annotations") or []),
    }
    for item in (query.get("filters") or {}).get("items", []):
        assert item["operator"] == "greater" and item["filter"] in columns, item
        value = columns[item["filter"]]
        tasks = [t for t in tasks if value(t) > item["value"]]
    if query.get("ordering") in (["tasks:id"], ["id"]):
        tasks = sorted(tasks, key=lambda t: t["id"])
    return tasks


def zoomed_test_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A random-weight model used zoomed in, as this project's small models are
    (``vit_tiny256`` with the ``zoom`` metadata the shipped ``vit_s256`` model carries)."""
    from pasam_plugins.checkpoint import save_checkpoint
    from pasam_plugins.segment import ZoomSettings
    from pasam_plugins.testing import make_test_model

    model = make_test_model(seed=seed, variant="vit_tiny256")
    return save_checkpoint(model, path, metadata={
        "untrained": True, "zoom": ZoomSettings().to_metadata(),
        "provenance": {"kind": "make-test-checkpoint", "seed": seed}})
