"""The image loader's URL policy against a real loopback trap that must receive nothing:
direct task URLs and redirects from the Label Studio origin, the token refresh, the total
download deadline, the legacy upload path's errors and local-files names."""

import io
import time

import numpy as np
import pytest
from hostile_support import (
    Origin,
    Trap,
    drip_body,
    drip_headers,
    png_header,
    redirect,
    send,
    sleep_then,
)
from labelstudio_support import make_jwt
from PIL import Image

from label_studio_backend.errors import ImageError
from label_studio_backend.images import ImageLoader, UnsafeURL, decode_image, url_origin

TOKEN = "legacy-token-123"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = np.tile(np.arange(64, dtype=np.uint8), (48, 1))


def image_route(h):
    if h.headers.get("Authorization") != f"Token {TOKEN}":
        return send(h, 401, b'{"detail": "no"}')
    send(h, 200, png(IMAGE), ctype="image/png")


# --------------------------------------------------------------------------- the policy
@pytest.mark.parametrize(
    "url, origin",
    [
        ("http://127.0.0.1:8080/data/upload/1/a.png", ("http", "127.0.0.1", 8080)),
        ("HTTP://LocalHost/x?y=1#z", ("http", "localhost", 80)),
        ("https://ls.example.com", ("https", "ls.example.com", 443)),
        ("http://[::1]:9/a", ("http", "[::1]", 9)),
        ("http://ls:080/a b.png", ("http", "ls", 80)),  # a space in the path is fine
    ],
)
def test_url_origin_of_plain_urls(url, origin):
    assert tuple(vars(url_origin(url)).values()) == origin


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:29192\\@127.0.0.1:29191/../../latest/meta-data/iam?x=1",
        "http://h\\#@x/",
        "http://127.0.0.1:1\\/x",
        "http://user@h/",
        "http://user:pw@h/",
        "http://h:99999/",
        "http://h:abc/",
        "http://h:0/",
        "http://h:+80/",
        "http://h:8080:9090/",
        "http://ex%41mple.com/",
        "http://exämple.com/",
        "http://h\t/",
        "http://h /",
        "http://h\r\nX-Injected: 1/",
        "http://[::1/",
        "http://[fe80::1%25eth0]/",
        "ftp://h/",
        "file:///etc/passwd",
        "//h/x",
        "http:/h/x",
        " http://h/",
        "",
        5,
    ],
)
def test_url_origin_refuses_ambiguous_urls(url):
    with pytest.raises(UnsafeURL):
        url_origin(url)


# --------------------------------------------------------------------------- direct URLs
def hostile_urls(trap: int, ls: int) -> list[str]:
    return [
        f"http://127.0.0.1:{trap}\\@127.0.0.1:{ls}/../../latest/meta-data/iam?x=1",
        f"http://127.0.0.1:{trap}\\#@127.0.0.1:{ls}/",
        f"http://127.0.0.1:{ls}@127.0.0.1:{trap}/",
        f"http://user:pw@127.0.0.1:{trap}/",
        f"http://127.0.0.1:{trap}/x.png",
        f"HTTP://127.0.0.1:{trap}/x.png",
        f"http://localhost:{trap}/x.png",
        f"http://0x7f000001:{trap}/x.png",
        f"http://[::ffff:127.0.0.1]:{trap}/x.png",
        f"http://127.0.0.1:{ls}:{trap}/",
        f"http://127.0.0.1:{trap}\t/",
        f"//127.0.0.1:{trap}/x.png",
        f"/\\127.0.0.1:{trap}/x.png",
        f" http://127.0.0.1:{trap}/x.png",
    ]


def test_direct_urls_to_other_origins_never_reach_them():
    with Trap() as trap, Origin({"/data/upload/1/a.png": image_route}) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=3)
        ls_port = int(ls.url.rsplit(":", 1)[1])
        for url in hostile_urls(trap.port, ls_port):
            with pytest.raises(ImageError) as e:
                loader.load(url, task_id=1)
            assert e.value.status_code in (400, 403), (url, e.value.message)
        time.sleep(0.3)
        assert trap.connections == 0 and trap.received == b""
        assert ls.requests == []  # refused before anything was sent
        # the loader still works for the configured origin
        assert loader.load(f"{ls.url}/data/upload/1/a.png").shape == (48, 64, 3)


# --------------------------------------------------------------------------- redirects
def test_redirects_to_other_origins_are_not_followed_and_carry_no_credentials():
    with Trap() as trap:
        routes = {"/data/upload/1/a.png": image_route}
        with Origin(routes) as ls:
            ls_port = int(ls.url.rsplit(":", 1)[1])
            locations = hostile_urls(trap.port, ls_port) + [
                f"//127.0.0.1:{trap.port}/x.png",
                f"http://127.0.0.1:{trap.port}",
                f"https://127.0.0.1:{trap.port}/x.png",
            ]
            for i, location in enumerate(locations):
                routes[f"/r/{i}"] = redirect(location.strip())
                routes[f"/hop/{i}"] = redirect(f"/r/{i}", 307)  # same origin first, then out
            loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=3)
            for i, location in enumerate(locations):
                for start in (f"/r/{i}", f"/hop/{i}"):
                    with pytest.raises(ImageError) as e:
                        loader.load(f"{ls.url}{start}")
                    assert e.value.status_code in (403, 404), (location, e.value.message)
            time.sleep(0.3)
            assert trap.connections == 0 and trap.received == b""
            # every request that was sent went to the origin, with the token
            assert ls.requests and all(auth == f"Token {TOKEN}" for _, _, auth in ls.requests)

            # same-origin redirects are followed, with the token on every hop
            routes["/moved"] = redirect("/data/upload/1/a.png", 301)
            assert loader.load(f"{ls.url}/moved").shape == (48, 64, 3)
            assert [p for _, p, _ in ls.requests[-2:]] == ["/moved", "/data/upload/1/a.png"]


def test_redirect_loops_end():
    with Origin({}) as ls:
        ls.routes["/loop"] = redirect("/loop")
        loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=3)
        with pytest.raises(ImageError) as e:
            loader.load(f"{ls.url}/loop")
        assert e.value.status_code == 502 and "redirects" in e.value.message
        assert len(ls.requests) == 6


def test_token_refresh_is_not_redirected_to_another_origin():
    """The personal access token (a JWT refresh token) is POSTed to LABEL_STUDIO_URL; a
    307 from there must not resend it elsewhere."""
    with Trap() as trap:
        routes = {"/api/token/refresh/": redirect(f"http://127.0.0.1:{trap.port}/steal", 307)}
        with Origin(routes) as ls:
            loader = ImageLoader(label_studio_url=ls.url, api_key=make_jwt("refresh"), timeout=3)
            with pytest.raises(ImageError) as e:
                loader.load("/data/upload/1/a.png")
            assert e.value.status_code == 502
            assert [(m, p) for m, p, _ in ls.requests] == [("POST", "/api/token/refresh/")]
        time.sleep(0.3)
        assert trap.connections == 0 and trap.received == b""


def test_label_studio_url_with_user_info_or_odd_host_is_refused():
    for url in (
        "http://u:p@127.0.0.1:8080",
        "http://127.0.0.1:8080\\@evil",
        "http://h:99999",
        "ftp://h",
        "http://exämple.com",
    ):
        with pytest.raises(ValueError, match="LABEL_STUDIO_URL"):
            ImageLoader(label_studio_url=url)


# --------------------------------------------------------------------------- deadlines
@pytest.mark.parametrize(
    "route",
    [drip_body(8), drip_headers(8), sleep_then(8)],
    ids=["dripping body", "dripping headers", "slow answer"],
)
def test_download_timeout_is_a_total_deadline(route):
    with Origin({"/data/upload/1/a.png": route}) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(ImageError) as e:
            loader.load(f"{ls.url}/data/upload/1/a.png")
        elapsed = time.monotonic() - t0
    assert e.value.status_code == 504 and "timed out" in e.value.message
    assert elapsed < 3.0, f"held the worker {elapsed:.1f} s with a 1 s deadline"


def test_the_deadline_covers_the_legacy_retry_too():
    routes = {"/storage-data/uploaded/": sleep_then(0.7, 404), "/data/upload/1/a.png": drip_body(8)}
    with Origin(routes) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(ImageError) as e:
            loader.load("/data/upload/1/a.png")
        assert e.value.status_code == 504
        assert time.monotonic() - t0 < 3.0


# --------------------------------------------------------------------------- legacy upload path
@pytest.mark.parametrize(
    "legacy, status, needle",
    [
        (lambda h: send(h, 401, b"{}"), 502, "401"),
        (lambda h: send(h, 403, b"{}"), 502, "LABEL_STUDIO_API_KEY"),
        (lambda h: send(h, 500, b"{}"), 502, "500"),
        (sleep_then(5), 504, "timed out"),
        (lambda h: send(h, 404, b"{}"), 404, "404"),
    ],
    ids=["401", "403", "500", "timeout", "404"],
)
def test_legacy_upload_path_errors_are_reported_not_hidden_as_404(legacy, status, needle):
    """Uploads are fetched from /storage-data/uploaded/ and, on an HTTP error, from the
    legacy /data/upload/ path; the SDK re-raises the first error (404) whatever the second
    attempt said."""
    routes = {
        "/storage-data/uploaded/": lambda h: send(h, 404, b"{}"),
        "/data/upload/1/a.png": legacy,
    }
    with Origin(routes) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=TOKEN, timeout=1.0)
        with pytest.raises(ImageError) as e:
            loader.load("/data/upload/1/a.png")
        assert e.value.status_code == status, e.value.message
        assert needle in e.value.message
        assert [p.split("?")[0] for _, p, _ in ls.requests] == [
            "/storage-data/uploaded/",
            "/data/upload/1/a.png",
        ]


# --------------------------------------------------------------------------- local files, decoding
@pytest.mark.parametrize(
    "d, status",
    [
        ("imgs/a%00b.png", 400),
        ("imgs/a%0Ab.png", 400),
        ("x" * 300 + ".png", 400),
        (("y" * 200 + "/") * 30 + "z.png", 400),
        ("imgs", 404),
    ],
    ids=["NUL", "newline", "name over 255 bytes", "path over 4000 bytes", "a directory"],
)
def test_hostile_local_files_names_are_4xx(tmp_path, d, status):
    (tmp_path / "imgs").mkdir()
    loader = ImageLoader(local_files_root=tmp_path)
    with pytest.raises(ImageError) as e:
        loader.load(f"/data/local-files/?d={d}")
    assert e.value.status_code == status, e.value.message


def test_pils_decompression_bomb_limit_is_413():
    data = png_header(20_000, 20_000)  # 400 Mpixel: over PIL's own limit too
    with pytest.raises(ImageError) as e:
        decode_image(data, name="bomb.png", max_pixels=10**12)
    assert e.value.status_code == 413 and "too large" in e.value.message
    with pytest.raises(ImageError) as e:
        decode_image(png_header(9000, 9000), name="big.png", max_pixels=64_000_000)
    assert e.value.status_code == 413 and "81000000 pixels" in e.value.message


def test_only_raster_formats_are_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError) as e:
        decode_image(eps, name="x.eps", max_pixels=10**6)
    assert e.value.status_code == 422 and "cannot decode" in e.value.message
