"""Hostile input against a real ``pasam serve`` process (random test weights, a local-files
root, a scripted Label Studio origin and a loopback trap on 127.0.0.1).

Every kind of bad request must be answered with a 4xx JSON error (never a 5xx), the process
must stay alive, the trap must receive nothing, and a good request right after must be
answered exactly as before. Plus: half-sent bodies (408), clients that disconnect mid-body
(no traceback, not an error), raw HTTP garbage, and 32 concurrent mixed requests whose
answers equal the sequential ones.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from hostile_support import (
    Origin,
    ServerProcess,
    Trap,
    drip_body,
    png_header,
    raw_request,
    redirect,
    send,
    status_of,
)
from labelstudio_support import (
    SAM_CONFIG,
    decode_brush,
    keypoint,
    predict_body,
    rectangle,
    write_test_images,
)
from PIL import Image

from pasam_plugins.checkpoint import load_model
from pasam_plugins.predictor import PASamPredictor

TOKEN = "legacy-token-123"
DOWNLOAD_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
MAX_REQUEST = 4 << 20


class Env:
    """What the tests share: the server, the fake Label Studio, the trap, the image URLs
    and the expected answer to the good request."""

    server: ServerProcess
    ls: Origin
    trap: Trap
    urls: dict[str, str]
    good_rle: list[int]

    def post(self, path: str, body: bytes, **kw) -> requests.Response:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return requests.post(self.server.url + path, data=body, headers=headers, timeout=60, **kw)


def good_body(urls) -> dict:
    """A click on a small EM crop (small: the noisy masks of random weights make big RLE)."""
    return predict_body(
        [{"id": 1, "data": {"image": urls["small.png"]}}], context=[keypoint(40, 55)]
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint, isbi_dir):
    em = np.asarray(Image.open(isbi_dir / "image" / "0.png"))
    root = tmp_path_factory.mktemp("hostile-root")
    urls = write_test_images(root, em)
    d = root / "imgs"
    small = np.ascontiguousarray(em[100:196, 200:312])  # 112 wide x 96 high
    Image.fromarray(small).save(d / "small.png")
    urls["small.png"] = "/data/local-files/?d=imgs/small.png"
    Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (1, 12))).save(d / "line.png")
    (d / "bomb.png").write_bytes(png_header(20_000, 20_000))
    (d / "big.png").write_bytes(png_header(9000, 9000))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image")
    (d / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (d / "nested").mkdir()
    for name in ("line", "bomb", "big", "empty", "text", "eps"):
        urls[f"{name}.png"] = f"/data/local-files/?d=imgs/{name}.png"

    e = Env()
    e.urls = urls
    log = tmp_path_factory.mktemp("hostile-log") / "server.log"
    with Trap() as trap:
        routes = {
            "/storage-data/uploaded/": lambda h: send(h, 404, b"{}"),
            "/data/upload/1/drip.png": drip_body(20),
            "/data/upload/1/legacy401.png": lambda h: send(h, 401, b"{}"),
            "/out": redirect(f"http://127.0.0.1:{trap.port}\\@127.0.0.1:1/x"),
            "/out2": redirect(f"http://127.0.0.1:{trap.port}/x"),
        }
        with Origin(routes) as ls:
            e.trap, e.ls = trap, ls
            e.server = ServerProcess(
                {
                    "PASAM_CHECKPOINT": str(tiny_checkpoint),
                    "LOCAL_FILES_DOCUMENT_ROOT": str(root),
                    "LABEL_STUDIO_URL": ls.url,
                    "LABEL_STUDIO_API_KEY": TOKEN,
                    "PASAM_DOWNLOAD_TIMEOUT": str(DOWNLOAD_TIMEOUT),
                    "PASAM_BODY_TIMEOUT": str(BODY_TIMEOUT),
                    "PASAM_MAX_REQUEST_BYTES": str(MAX_REQUEST),
                    "PASAM_CACHE_DIR": str(log.parent / "cache"),
                    "DEVICE": "cpu",
                    "LOG_LEVEL": "INFO",
                },
                log,
            )
            try:
                e.server.wait_ready()
                r = e.post("/predict", json.dumps(good_body(urls)).encode())
                assert r.status_code == 200, r.text
                region = r.json()["results"][0]["result"][0]
                e.good_rle = region["value"]["rle"]
                # the good answer is right: the mask of an independent predictor, same click
                ref = PASamPredictor(load_model(tiny_checkpoint))
                ref.set_image(small)
                want = ref.predict(
                    point_coords=np.array([[0.40 * 112 - 0.5, 0.55 * 96 - 0.5]]),
                    point_labels=np.array([1]),
                    multimask_output=True,
                ).masks[0]
                got = decode_brush(region)
                assert np.logical_and(got, want).sum() / np.logical_or(got, want).sum() > 0.99
                yield e
            finally:
                e.server.stop()


def assert_still_serving(e: Env) -> None:
    assert e.server.alive(), e.server.log()[-3000:]
    r = e.post("/predict", json.dumps(good_body(e.urls)).encode())
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["result"][0]["value"]["rle"] == e.good_rle


# --------------------------------------------------------------------------- the cases
def pb(context=None, url=None, config=SAM_CONFIG, task=None, **top) -> dict:
    """A /predict body (interactive when ``context`` is given)."""
    t = (
        task
        if task is not None
        else {"id": 1, "data": {"image": url or "/data/local-files/?d=imgs/em.png"}}
    )
    body = predict_body([t], context=context, config=config)
    body.update(top)
    return body


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def with_x(raw_x: str) -> bytes:
    """A /predict body whose first keypoint's value.x is the raw JSON text ``raw_x``."""
    return j(pb([keypoint(10, 10)])).replace(b'"x": 10', b'"x": ' + raw_x.encode(), 1)


def image(url: str) -> bytes:
    return j(pb([keypoint(10, 10)], url=url))


XXE = (
    '<!DOCTYPE v [<!ENTITY e SYSTEM "file:///etc/passwd">]><View><Image name="&e;" '
    'value="$image"/></View>'
)
LAUGHS = (
    '<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(8))
    + ']><View><Image name="&i;" value="$image"/></View>'
)


def build_cases(e: Env) -> list[tuple[str, str, bytes, set[int]]]:
    trap, ls_port = e.trap.port, int(e.ls.url.rsplit(":", 1)[1])
    deep = b'{"tasks": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    surrogate = j(pb([keypoint(10, 10)])).replace(b'"id": "kp"', b'"id": "\\ud800"', 1)
    many = [keypoint(1 + i % 90, 1 + (i // 90) % 90, rid=f"k{i}") for i in range(1001)]
    return [
        # --- JSON itself
        ("malformed JSON", "/predict", b"{not json", {400}),
        ("empty body", "/predict", b"", {400}),
        ("top-level array", "/predict", b"[1, 2]", {400}),
        ("top-level string", "/predict", b'"tasks"', {400}),
        ("400-digit integer coordinate", "/predict", with_x("1" * 400), {400}),
        ("5000-digit number", "/predict", with_x("9" * 5000), {400}),
        ("1e400 coordinate", "/predict", with_x("1e400"), {400}),
        ("NaN coordinate", "/predict", with_x("NaN"), {400}),
        ("Infinity coordinate", "/predict", with_x("-Infinity"), {400}),
        ("nested 1000 deep", "/predict", deep, {400}),
        ("nested 100000 deep", "/setup", b"[" * 100_000 + b"]" * 100_000, {400}),
        ("lone surrogate in a region id", "/predict", surrogate, {400}),
        (
            "invalid UTF-8",
            "/predict",
            j(pb([keypoint(10, 10)])).replace(b'"kp"', b'"\xff\xfe"'),
            {400},
        ),
        ("UTF-16 body", "/predict", json.dumps(pb([keypoint(10, 10)])).encode("utf-16"), {400}),
        # --- request structure
        ("tasks not a list", "/predict", j({"tasks": {}, "label_config": SAM_CONFIG}), {400}),
        ("task not an object", "/predict", j({"tasks": [1], "label_config": SAM_CONFIG}), {400}),
        ("label_config a number", "/predict", j({"tasks": [], "label_config": 5}), {400}),
        ("label_config not XML", "/predict", j(pb([keypoint(1, 1)], config="<View")), {422}),
        (
            "label_config with an external entity",
            "/predict",
            j(pb([keypoint(1, 1)], config=XXE)),
            {422},
        ),
        ("label_config billion laughs", "/predict", j(pb([keypoint(1, 1)], config=LAUGHS)), {422}),
        ("params not an object", "/predict", j(pb(params=[1])), {400}),
        (
            "context.result not a list",
            "/predict",
            j(pb(params={"context": {"result": "x"}})),
            {400},
        ),
        (
            "task without the image field",
            "/predict",
            j(pb([keypoint(1, 1)], task={"id": 1, "data": {}})),
            {400},
        ),
        # --- regions
        ("region a string", "/predict", j(pb(["region"])), {422}),
        ("unknown from_name", "/predict", j(pb([dict(keypoint(5, 5), from_name="nope")])), {422}),
        (
            "1 MB from_name",
            "/predict",
            j(pb([dict(keypoint(5, 5), from_name="n" * (1 << 20))])),
            {422},
        ),
        (
            "coordinate a string",
            "/predict",
            j(pb([dict(keypoint(5, 5), value={"x": "5", "y": 5})])),
            {422},
        ),
        (
            "coordinate a boolean",
            "/predict",
            j(pb([dict(keypoint(5, 5), value={"x": True, "y": 5})])),
            {422},
        ),
        (
            "coordinate a list",
            "/predict",
            j(pb([dict(keypoint(5, 5), value={"x": [[5]], "y": 5})])),
            {422},
        ),
        ("coordinate outside 0..100", "/predict", j(pb([keypoint(101, 5)])), {422}),
        ("rotation a string", "/predict", j(pb([rectangle(5, 5, 10, 10, rotation="90")])), {422}),
        ("1001 keypoints", "/predict", j(pb(many)), {422}),
        # --- image URLs and files
        (
            "backslash SSRF URL",
            "/predict",
            image(f"http://127.0.0.1:{trap}\\@127.0.0.1:{ls_port}/../../latest/meta-data/iam?x=1"),
            {403},
        ),
        ("port 99999", "/predict", image("http://127.0.0.1:99999/a.png"), {403}),
        ("port abc", "/predict", image("http://127.0.0.1:abc/a.png"), {403}),
        (
            "backslash-hash-at URL",
            "/predict",
            image(f"http://127.0.0.1:{trap}\\#@127.0.0.1:{ls_port}/"),
            {403},
        ),
        ("user info URL", "/predict", image(f"http://u:p@127.0.0.1:{trap}/a.png"), {403}),
        ("unclosed IPv6 bracket", "/predict", image("http://[::1/a.png"), {400, 403}),
        ("file URL", "/predict", image("file:///etc/passwd"), {403}),
        ("gopher URL", "/predict", image(f"gopher://127.0.0.1:{trap}/_x"), {403}),
        ("redirect to the trap", "/predict", image(f"{e.ls.url}/out"), {403}),
        ("redirect to another port", "/predict", image(f"{e.ls.url}/out2"), {403}),
        ("image URL a number", "/predict", image(12), {400}),
        (
            "cloud URL without a task id",
            "/predict",
            j(pb([keypoint(1, 1)], task={"id": "x", "data": {"image": "s3://b/a.png"}})),
            {400},
        ),
        ("NUL in ?d=", "/predict", image("/data/local-files/?d=imgs/a%00.png"), {400}),
        (
            "name over 255 bytes in ?d=",
            "/predict",
            image("/data/local-files/?d=" + "x" * 300),
            {400},
        ),
        (
            "?d= leaving the root",
            "/predict",
            image("/data/local-files/?d=../../../etc/passwd"),
            {403, 404},
        ),
        ("?d= a directory", "/predict", image("/data/local-files/?d=imgs/nested"), {404}),
        ("corrupt PNG", "/predict", image(e.urls["corrupt.png"]), {422}),
        ("empty file", "/predict", image(e.urls["empty.png"]), {422}),
        ("text file", "/predict", image(e.urls["text.png"]), {422}),
        ("EPS file", "/predict", image(e.urls["eps.png"]), {422}),
        ("PNG over PIL's pixel limit", "/predict", image(e.urls["bomb.png"]), {413}),
        ("PNG over PASAM_MAX_IMAGE_PIXELS", "/predict", image(e.urls["big.png"]), {413}),
        (
            "download dripping past the deadline",
            "/predict",
            image("/data/upload/1/drip.png"),
            {504},
        ),
        ("legacy upload path 401", "/predict", image("/data/upload/1/legacy401.png"), {502}),
        # --- webhook, train, setup
        ("webhook action with a lone surrogate", "/webhook", b'{"action": "\\udc80x"}', {400}),
        ("webhook without action", "/webhook", j({"project": {"id": 1}}), {400}),
        ("webhook action a list", "/webhook", j({"action": ["START_TRAINING"]}), {400}),
        (
            "START_TRAINING project '²'",
            "/webhook",
            j({"action": "START_TRAINING", "project": "²"}),
            {400},
        ),
        (
            "START_TRAINING project id '¹²'",
            "/webhook",
            j({"action": "START_TRAINING", "project": {"id": "¹²"}}),
            {400},
        ),
        (
            "START_TRAINING 5000-digit project",
            "/webhook",
            j({"action": "START_TRAINING", "project": "7" * 5000}),
            {400},
        ),
        ("/train project '²'", "/train", j({"project": "²", "annotations": []}), {400}),
        (
            "/train 5000-digit project",
            "/train",
            j({"project": "7" * 5000 + ".1", "annotations": []}),
            {400},
        ),
        ("/train annotations not a list", "/train", j({"project": "1", "annotations": 5}), {400}),
        ("/setup without schema", "/setup", j({"project": "1.1"}), {400}),
        ("/setup schema a list", "/setup", j({"schema": [SAM_CONFIG]}), {400}),
        ("/setup schema with an external entity", "/setup", j({"schema": XXE}), {422}),
        # --- size
        ("body over PASAM_MAX_REQUEST_BYTES", "/predict", b" " * (MAX_REQUEST + 10), {413}),
    ]


def _case_names() -> list[str]:
    class Stub:
        trap = type("T", (), {"port": 1})()
        ls = type("L", (), {"url": "http://127.0.0.1:2"})()
        urls = {
            k: ""
            for k in (
                "corrupt.png",
                "empty.png",
                "text.png",
                "eps.png",
                "bomb.png",
                "big.png",
                "line.png",
            )
        }

    return [c[0] for c in build_cases(Stub())]


NAMES = _case_names()


def test_there_are_at_least_40_kinds_of_hostile_input():
    assert len(NAMES) >= 40 and len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_request_is_a_4xx_and_the_server_keeps_serving(env, name):
    ((_, path, body, expected),) = [c for c in build_cases(env) if c[0] == name]
    t0 = time.monotonic()
    r = env.post(path, body)
    elapsed = time.monotonic() - t0
    assert r.status_code in expected, (r.status_code, r.text[:500])
    payload = r.json()
    assert isinstance(payload.get("error"), str) and payload["status"] == r.status_code
    assert len(r.content) < 10_000, "error messages stay short"
    assert "root:" not in r.text  # nothing of /etc/passwd comes back
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert_still_serving(env)


def test_an_image_too_elongated_for_the_model_input_is_tiled_like_pasam_predict(env):
    """A 3000x1 image is too elongated for the model's resize (3000:1 > 2048:1); since the
    backend segments through the core's Segmenter, it is tiled at native resolution, as
    ``pasam predict`` does (tests/test_image_limits.py), instead of refused: a brush mask of
    the image's size, and the server keeps serving."""
    r = env.post("/predict", image(env.urls["line.png"]))
    assert r.status_code == 200, r.text[:500]
    for region in r.json()["results"][0]["result"]:
        assert (region["original_width"], region["original_height"]) == (3000, 1)
    assert_still_serving(env)


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/predict", None, 405),
        ("/nope", b"{}", 404),
    ],
)
def test_wrong_method_and_path(env, path, body, status):
    r = requests.get(env.server.url + path, timeout=30) if body is None else env.post(path, body)
    assert r.status_code == status
    assert_still_serving(env)


def test_chunked_body_over_the_limit_is_413(env):
    def chunks():
        for _ in range(MAX_REQUEST // 65536 + 2):
            yield b" " * 65536

    r = requests.post(
        env.server.url + "/predict",
        data=chunks(),
        timeout=60,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert_still_serving(env)


# --------------------------------------------------------------------------- raw HTTP
def test_half_sent_body_times_out_with_408(env):
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    t0 = time.monotonic()
    answer = raw_request(env.server.port, head + b'{"tasks": [', timeout=BODY_TIMEOUT + 20)
    assert status_of(answer) == 408, answer[:300]
    assert time.monotonic() - t0 < BODY_TIMEOUT + 5
    assert b"did not arrive" in answer
    assert_still_serving(env)


def test_client_disconnecting_mid_body_is_one_quiet_log_line(env):
    before = requests.get(env.server.url + "/metrics", timeout=30).json()["errors"]
    log_before = len(env.server.log())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", env.server.port)) as s:
            s.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"tasks"')
            time.sleep(0.2)
    time.sleep(1.0)
    assert_still_serving(env)
    new_log = env.server.log()[log_before:]
    assert "Traceback" not in new_log and "ERROR" not in new_log, new_log
    assert new_log.count("disconnected before sending the whole request body") == 3
    assert requests.get(env.server.url + "/metrics", timeout=30).json()["errors"] == before


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ],
    ids=["garbage request line", "negative length", "huge length", "bad chunk size", "two lengths"],
)
def test_malformed_http_is_a_4xx(env, raw):
    answer = raw_request(env.server.port, raw, timeout=BODY_TIMEOUT + 20)
    assert 400 <= status_of(answer) < 500, answer[:300]
    assert_still_serving(env)


# --------------------------------------------------------------------------- concurrency
def mixed_requests(e: Env) -> list[tuple[str, str, bytes | None]]:
    u = e.urls
    names = ["em.png", "wide.png", "tall.png", "rgba.png"]
    out: list[tuple[str, str, bytes | None]] = []
    for i, n in enumerate(names):
        out.append(("POST", "/predict", j(pb([keypoint(20 + 9 * i, 30 + 7 * i)], url=u[n]))))
    for n in ("wide.png", "tall.png"):
        task = {
            "id": 5,
            "data": {"image": u[n]},
            "annotations": [
                {
                    "id": 1,
                    "result": [
                        rectangle(10, 10, 30, 40, rid="a"),
                        rectangle(50, 40, 30, 30, rid="b"),
                    ],
                }
            ],
        }
        out.append(("POST", "/predict", j(pb(task=task))))
    out.append(("POST", "/predict", b"{not json"))
    out.append(("POST", "/predict", j(pb([dict(keypoint(5, 5), from_name="nope")]))))
    out.append(("POST", "/predict", image(u["corrupt.png"])))
    out.append(("POST", "/setup", j({"project": "1.1", "schema": SAM_CONFIG})))
    out.append(("GET", "/health", None))
    return out


def normalized(r: requests.Response):
    body = r.json()
    if isinstance(body, dict) and "results" in body:
        for res in body["results"]:
            for region in res["result"]:
                region.pop("id")  # a fresh random id per answer
    return r.status_code, body


def call(e: Env, req) -> requests.Response:
    method, path, body = req
    if method == "GET":
        return requests.get(e.server.url + path, timeout=120)
    return e.post(path, body)


def test_32_concurrent_mixed_requests_equal_the_sequential_answers(env):
    kinds = mixed_requests(env)
    sequential = [normalized(call(env, k)) for k in kinds]
    assert [s for s, _ in sequential] == [200] * 6 + [400, 422, 422, 200, 200]
    order = [i % len(kinds) for i in range(32)]
    barrier = threading.Barrier(32)

    def go(i: int):
        barrier.wait()
        return normalized(call(env, kinds[i]))

    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(go, order))
    for i, got in zip(order, concurrent, strict=True):
        assert got == sequential[i], f"request kind {i} differs under load"
    assert_still_serving(env)


# --------------------------------------------------------------------------- at the end
def test_the_trap_received_nothing_and_the_log_has_no_traceback(env):
    time.sleep(0.3)
    assert env.trap.connections == 0 and env.trap.received == b""
    log = env.server.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:4000]
    assert env.server.alive()


def test_label_config_cache_does_not_keep_config_texts():
    """Label Studio sends the labeling config with every request: the parser's cache keys on
    a digest, so 20 distinct ~200 KB configs do not stay in memory."""
    import gc
    import tracemalloc

    from label_studio_backend.labelconfig import parse_label_config

    configs = [
        SAM_CONFIG.replace("<View>", f"<View><!-- {i} {'x' * 200_000} -->", 1) for i in range(20)
    ]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for c in configs:
        parse_label_config(c)
    del c
    configs.clear()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert kept < 1_000_000, f"{kept} bytes kept after parsing 4 MB of configs"


def test_hostile_support_png_header_is_what_it_claims(tmp_path):
    path = Path(tmp_path) / "h.png"
    path.write_bytes(png_header(123, 45))
    with Image.open(path) as im:
        assert im.size == (123, 45)
