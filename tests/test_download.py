"""Checkpoint download: against a local HTTP server on 127.0.0.1 (no internet needed)."""

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from pasam_plugins.download import (
    DownloadError,
    default_cache_dir,
    download,
    fetch,
    local_checkpoint,
    sha256_file,
)
from pasam_plugins.registry import RegistryError, get_entry, load_registry

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB + 4 bytes: more than one chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append(self.path)
        if self.path == "/ckpt.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")


@pytest.fixture()
def server():
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_entry(url: str, *, sha256: str | None = PAYLOAD_SHA, size: int | None = None, **kw):
    raw = {
        "kind": "sam",
        "variant": "vit_b",
        "url": url,
        "filename": kw.pop("filename", "test_ckpt.pth"),
        "sha256": sha256,
        "size_bytes": size,
        **kw,
    }
    path_doc = {"schema_version": 1, "models": {"test": raw}}
    return path_doc, raw


def entry_for(tmp_path: Path, url: str, **kw):
    doc, _ = make_entry(url, **kw)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps(doc))
    return get_entry("test", load_registry(reg))


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_bundled_registry_has_the_official_sam_checkpoints():
    reg = load_registry()
    for variant, stem in [
        ("vit_b", "sam_vit_b_01ec64"),
        ("vit_l", "sam_vit_l_0b3195"),
        ("vit_h", "sam_vit_h_4b8939"),
    ]:
        e = reg[variant]
        assert e.url == f"https://dl.fbaipublicfiles.com/segment_anything/{stem}.pth"
        assert e.variant == variant and e.kind == "sam" and e.direct_download
        assert e.sha256 is not None and len(e.sha256) == 64
        assert e.card_text() and variant in e.card_text()
    pa = reg["pa_sam_l"]
    assert pa.requires == "vit_l" and not pa.direct_download and pa.sha256 is None
    assert "pa-sam" in pa.card_text().lower()
    with pytest.raises(RegistryError, match="unknown model 'vit_x'.*vit_b"):
        get_entry("vit_x", reg)


def test_registry_rejects_malformed_entries(tmp_path):
    reg = tmp_path / "r.json"
    reg.write_text(json.dumps({"models": {"bad": {"kind": "sam", "variant": "vit_b"}}}))
    with pytest.raises(RegistryError, match="lacks url, filename"):
        load_registry(reg)
    reg.write_text(json.dumps(make_entry("http://x/y", sha256="abc")[0]))
    with pytest.raises(RegistryError, match="64 hex digits"):
        load_registry(reg)
    reg.write_text(json.dumps(make_entry("http://x/y", filename="../evil.pth")[0]))
    with pytest.raises(RegistryError, match="bare file name"):
        load_registry(reg)
    reg.write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(reg)


def test_download_verifies_and_renames_atomically(tmp_path, server):
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth", size=len(PAYLOAD))
    res = fetch(entry, cache, progress=False)
    assert res.path == cache / "test_ckpt.pth"
    assert res.path.read_bytes() == PAYLOAD
    assert res.verified and not res.reused and res.sha256 == PAYLOAD_SHA
    # only the file and its verification marker: no temporary files left behind
    assert leftovers(cache) == ["test_ckpt.pth", "test_ckpt.pth.verified"]


def test_verified_file_is_reused_without_network(tmp_path, server):
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth")
    first = download("ignored", cache, entry=entry, progress=False)
    assert _Handler.requests == ["/ckpt.pth"]
    res = fetch(entry, cache, progress=False)
    assert res.reused and res.verified and res.path == first
    assert _Handler.requests == ["/ckpt.pth"]  # no second request


def test_corrupted_cached_file_is_replaced(tmp_path, server):
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth")
    cache.mkdir()
    (cache / "test_ckpt.pth").write_bytes(b"half a download")
    res = fetch(entry, cache, progress=False)
    assert not res.reused and res.verified
    assert sha256_file(res.path) == PAYLOAD_SHA


def test_checksum_mismatch_deletes_the_download(tmp_path, server):
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth", sha256="0" * 64)
    with pytest.raises(DownloadError) as info:
        download("test", cache, entry=entry, progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "0" * 64 in msg and PAYLOAD_SHA in msg
    assert "\n" not in msg
    assert leftovers(cache) == []


def test_unpublished_digest_is_never_reported_verified(tmp_path, server):
    entry = entry_for(tmp_path, f"{server}/ckpt.pth", sha256=None)
    res = fetch(entry, tmp_path / "cache", progress=False)
    assert res.path.read_bytes() == PAYLOAD
    assert not res.verified
    again = fetch(entry, tmp_path / "cache", progress=False)
    assert again.reused and not again.verified


def test_unreachable_host_gives_one_line_error(tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = entry_for(tmp_path, f"http://127.0.0.1:{port}/ckpt.pth")
    with pytest.raises(DownloadError) as info:
        fetch(entry, tmp_path / "cache", progress=False, timeout=5)
    msg = str(info.value)
    assert msg.startswith(f"cannot reach 127.0.0.1:{port}") and "\n" not in msg
    assert "--checkpoint" in msg
    assert leftovers(tmp_path / "cache") == []


def test_http_error_and_truncated_transfer(tmp_path, server):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(entry_for(tmp_path, f"{server}/missing.pth"), cache, progress=False)
    with pytest.raises(DownloadError, match="(incomplete|interrupted)"):
        fetch(entry_for(tmp_path, f"{server}/truncated.pth"), cache, progress=False)
    assert leftovers(cache) == []


def test_size_mismatch_is_refused_before_downloading(tmp_path, server):
    entry = entry_for(tmp_path, f"{server}/ckpt.pth", size=123)
    with pytest.raises(DownloadError, match="registry expects 123"):
        fetch(entry, tmp_path / "cache", progress=False)


def test_not_directly_downloadable_entry_explains(tmp_path):
    entry = entry_for(
        tmp_path, "https://pan.example/s/share", direct_download=False, requires="vit_l"
    )
    with pytest.raises(DownloadError, match="cannot be downloaded automatically.*pan.example"):
        fetch(entry, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_local_checkpoint_uses_the_cache_and_hand_placed_files(tmp_path, server):
    """What the napari panel loads: a direct entry is downloaded once and then reused; a
    manual-download entry is the file put into the cache by hand, else a message naming
    the folder."""
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth")
    path = local_checkpoint(entry, cache)
    assert path == cache / entry.filename and sha256_file(path) == PAYLOAD_SHA
    assert local_checkpoint(entry, cache) == path
    manual = entry_for(
        tmp_path, "https://pan.example/s/share", direct_download=False, filename="epoch_20.pth"
    )
    with pytest.raises(DownloadError, match=f"put it into {cache}"):
        local_checkpoint(manual, cache)
    (cache / manual.filename).write_bytes(b"placed by hand")
    assert local_checkpoint(manual, cache) == cache / manual.filename


def test_cache_dir_from_environment(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    path = download("test", entry=entry_for(tmp_path, f"{server}/ckpt.pth"), progress=False)
    assert path == tmp_path / "envcache" / "test_ckpt.pth"
    monkeypatch.delenv("PASAM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "pasam"


def test_the_shipped_default_model_needs_no_download_and_is_checked(tmp_path):
    """`pasam download pasam_micro` (and every front end through fetch) gets the file shipped
    in the package, verified against the registry; a damaged file is refused by name."""
    import dataclasses

    from pasam_plugins.download import DownloadError, fetch
    from pasam_plugins.registry import DEFAULT_MODEL, get_entry

    entry = get_entry(DEFAULT_MODEL)
    result = fetch(entry, tmp_path)
    assert result.path == entry.bundled_path and result.verified
    assert list(tmp_path.iterdir()) == []  # nothing copied or downloaded
    with pytest.raises(DownloadError, match="does not match the registry's sha256"):
        fetch(dataclasses.replace(entry, sha256="0" * 64), tmp_path)


def test_local_checkpoint_of_a_bundled_entry_is_the_shipped_file(tmp_path, monkeypatch):
    """The napari panel's default model: local_checkpoint gives the file shipped in the
    package (checked by fetch) although bundled entries are not 'direct_download', never
    the manual-download message, with an empty cache and no network."""
    import dataclasses

    from pasam_plugins.registry import DEFAULT_MODEL, get_entry

    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "cache"))
    entry = get_entry(DEFAULT_MODEL)
    assert entry.bundled and not entry.direct_download
    assert local_checkpoint(entry) == entry.bundled_path
    assert local_checkpoint(entry, tmp_path / "other") == entry.bundled_path
    assert not (tmp_path / "cache").exists() and not (tmp_path / "other").exists()
    with pytest.raises(DownloadError, match="does not match the registry's sha256"):
        local_checkpoint(dataclasses.replace(entry, sha256="f" * 64), tmp_path)


PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_an_entry_with_only_a_published_md5_is_verified_by_it(tmp_path, server):
    """HQ-SAM's files have a published MD5 and no SHA-256: a download is checked against
    it (and reported verified), reused later without network, replaced when damaged, and
    deleted with a one-line error when it does not match."""
    cache = tmp_path / "cache"
    entry = entry_for(tmp_path, f"{server}/ckpt.pth", sha256=None, md5=PAYLOAD_MD5.upper())
    assert entry.md5 == PAYLOAD_MD5 and entry.verifiable
    res = fetch(entry, cache, progress=False)
    assert res.verified and not res.reused and res.sha256 == PAYLOAD_SHA
    assert leftovers(cache) == ["test_ckpt.pth", "test_ckpt.pth.verified"]
    again = fetch(entry, cache, progress=False)
    assert again.verified and again.reused and _Handler.requests == ["/ckpt.pth"]
    # a damaged cached copy (same size, other bytes): found by its MD5, downloaded again
    damaged = bytearray(PAYLOAD)
    damaged[10] ^= 0xFF
    (cache / "test_ckpt.pth").write_bytes(bytes(damaged))
    res = fetch(entry, cache, progress=False)
    assert not res.reused and res.verified and res.path.read_bytes() == PAYLOAD
    wrong = entry_for(tmp_path, f"{server}/ckpt.pth", sha256=None, md5="0" * 32)
    with pytest.raises(DownloadError) as info:
        fetch(wrong, tmp_path / "other", progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "md5" in msg and PAYLOAD_MD5 in msg and "\n" not in msg
    assert leftovers(tmp_path / "other") == []


def test_registry_rejects_a_malformed_md5(tmp_path):
    with pytest.raises(RegistryError, match="md5 must be 32 hex digits"):
        entry_for(tmp_path, "http://127.0.0.1/x.pth", sha256=None, md5="abc")
