"""Task image loading: local files, downloads from Label Studio with personal access tokens
or legacy tokens, refusal of anything else (SSRF), limits, and image kinds."""

import io

import numpy as np
import pytest
from labelstudio_support import FakeLabelStudio, write_test_images
from PIL import Image

from label_studio_backend.errors import ImageError
from label_studio_backend.images import ImageLoader, decode_image


@pytest.fixture(scope="module")
def em(isbi_dir) -> np.ndarray:
    return np.asarray(Image.open(isbi_dir / "image" / "0.png"))


@pytest.fixture()
def local_root(tmp_path, em):
    urls = write_test_images(tmp_path, em)
    return tmp_path, urls


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_local_files_are_read_from_the_document_root(local_root, em):
    root, urls = local_root
    loader = ImageLoader(local_files_root=root)
    img = loader.load(urls["wide.png"])
    assert img.shape == (320, 512, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], em[96:416, :])
    # the decoded image is kept: a second load does not read the file again
    loader.load(urls["wide.png"])
    assert loader.local_reads == 1


@pytest.mark.parametrize(
    "name",
    ["em16.png", "rgba.png", "em.png"],
)
def test_16bit_gray_and_rgba_images_become_rgb_uint8(local_root, name, em):
    root, urls = local_root
    img = ImageLoader(local_files_root=root).load(urls[name])
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    # contrast is kept: the normalized image correlates with the original section
    r = np.corrcoef(img[..., 0].ravel().astype(float), em.ravel().astype(float))[0, 1]
    assert r > 0.95


@pytest.mark.parametrize(
    "url",
    [
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=imgs/../../secret.png",
        "/data/local-files/?d=/etc/passwd/../../..",
    ],
)
def test_paths_outside_the_document_root_are_refused(local_root, url):
    root, _ = local_root
    (root.parent / "secret.png").write_bytes(b"x")
    with pytest.raises(ImageError) as e:
        ImageLoader(local_files_root=root).load(url)
    assert e.value.status_code in (403, 404)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "https://example.com/cat.png",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "/etc/passwd",
        "gopher://127.0.0.1:6379/_x",
    ],
)
def test_other_hosts_and_schemes_are_refused(local_root, url):
    root, _ = local_root
    loader = ImageLoader(local_files_root=root, label_studio_url="http://127.0.0.1:9", api_key="t")
    with pytest.raises(ImageError) as e:
        loader.load(url)
    assert e.value.status_code in (400, 403)
    assert "LABEL_STUDIO_URL" in e.value.message or "unsupported" in e.value.message


def test_missing_and_corrupt_files(local_root):
    root, urls = local_root
    loader = ImageLoader(local_files_root=root)
    with pytest.raises(ImageError) as e:
        loader.load("/data/local-files/?d=imgs/nope.png")
    assert e.value.status_code == 404 and "nope.png" in e.value.message
    with pytest.raises(ImageError) as e:
        loader.load(urls["corrupt.png"])
    assert e.value.status_code == 422 and "decode" in e.value.message


def test_oversized_images_are_refused_before_decoding(local_root):
    root, urls = local_root
    with pytest.raises(ImageError) as e:
        ImageLoader(local_files_root=root, max_pixels=100_000).load(urls["em.png"])
    assert e.value.status_code == 413 and "pixels" in e.value.message
    with pytest.raises(ImageError) as e:
        ImageLoader(local_files_root=root, max_bytes=1000).load(urls["em.png"])
    assert e.value.status_code == 413 and "bytes" in e.value.message


def test_decode_image_rejects_garbage():
    with pytest.raises(ImageError):
        decode_image(b"", name="x", max_pixels=10**6)


def test_download_with_personal_access_token(em):
    files = {"a.png": png_bytes(em[:300, :200])}
    with FakeLabelStudio(files) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=ls.personal_token)
        img = loader.load("/data/upload/1/a.png", task_id=7)
        assert img.shape == (300, 200, 3)
        np.testing.assert_array_equal(img[..., 0], em[:300, :200])
        # the refresh token was exchanged once for a Bearer access token
        assert ls.refreshes == 1
        gets = [r for r in ls.requests if r[0] == "GET"]
        assert gets and all(auth.startswith("Bearer ") for _, _, auth in gets)
        assert all(auth[7:] != ls.personal_token for _, _, auth in gets)
        # cached: no second download
        loader.load("/data/upload/1/a.png", task_id=7)
        assert loader.downloads == 1


def test_download_with_legacy_token_and_local_files_url(em):
    files = {"b/c.png": png_bytes(em[:100, :120])}
    with FakeLabelStudio(files) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=ls.legacy_token)
        img = loader.load("/data/local-files/?d=b/c.png")
        assert img.shape == (100, 120, 3)
        assert ls.refreshes == 0
        assert {auth for m, _, auth in ls.requests if m == "GET"} == {f"Token {ls.legacy_token}"}
        # an absolute URL on the same origin works too
        img = loader.load(f"{ls.url}/data/upload/1/b/c.png")
        np.testing.assert_array_equal(img[..., 0], em[:100, :120])


def test_setup_token_is_used_when_no_api_key_is_configured(em):
    files = {"a.png": png_bytes(em[:64, :64])}
    with FakeLabelStudio(files) as ls:
        loader = ImageLoader(label_studio_url=ls.url)
        with pytest.raises(ImageError) as e:
            loader.load("/data/upload/1/a.png")
        assert "LABEL_STUDIO_API_KEY" in e.value.message
        img = loader.load("/data/upload/1/a.png", fallback_token=ls.legacy_token)
        assert img.shape == (64, 64, 3)


def test_download_errors_are_clear(em):
    with FakeLabelStudio({"a.png": png_bytes(em[:64, :64])}) as ls:
        bad = ImageLoader(label_studio_url=ls.url, api_key="wrong-legacy-token")
        with pytest.raises(ImageError) as e:
            bad.load("/data/upload/1/a.png")
        assert e.value.status_code == 502 and "401" in e.value.message
        good = ImageLoader(label_studio_url=ls.url, api_key=ls.legacy_token, timeout=1.0,
                           max_bytes=1 << 20)
        with pytest.raises(ImageError) as e:
            good.load("/data/upload/1/missing.png")
        assert e.value.status_code == 404
        with pytest.raises(ImageError) as e:
            good.load(f"{ls.url}/redirect-out")
        assert e.value.status_code == 403  # redirect to another host is not followed
        with pytest.raises(ImageError) as e:
            good.load(f"{ls.url}/huge")
        assert e.value.status_code == 413
        with pytest.raises(ImageError) as e:
            good.load(f"{ls.url}/slow")
        assert e.value.status_code == 504
        with pytest.raises(ImageError) as e:
            ImageLoader(label_studio_url=ls.url, api_key=ls.personal_token.replace("e", "f", 3)).load(
                "/data/upload/1/a.png"
            )
        assert e.value.status_code == 502


def test_cloud_storage_uri_is_fetched_through_label_studio_presign(em):
    with FakeLabelStudio({"d/e.png": png_bytes(em[:50, :70])}) as ls:
        loader = ImageLoader(label_studio_url=ls.url, api_key=ls.legacy_token)
        with pytest.raises(ImageError) as e:
            loader.load("s3://bucket/d/e.png")
        assert e.value.status_code == 400 and "task id" in e.value.message
        img = loader.load("s3://bucket/d/e.png", task_id=7)
        assert img.shape == (50, 70, 3)
        assert any(path.startswith("/tasks/7/presign") for _, path, _ in ls.requests)
