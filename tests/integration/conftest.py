"""Session fixtures of the integration tests: one real Label Studio 1.23.2 and one ``pasam
serve``, shared by the end-to-end (REST) and the browser tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lsrun import (
    LEGACY_TOKEN,
    LS,
    LS_VERSION,
    ROOT,
    SSRF_SETTING,
    free_port,
    start_label_studio,
    stop,
    wait_for,
)
from PIL import Image


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (the browser fixture saves a screenshot
    when the test failed)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def ls_venv() -> Path:
    venv = Path(os.environ.get("PASAM_LS_VENV", Path.home() / ".cache/pasam/ls-venv"))
    env = {**os.environ, "PASAM_LS_VENV": str(venv), "PASAM_LS_VERSION": LS_VERSION}
    env.setdefault("PASAM_LS_PYTHON", sys.executable)
    r = subprocess.run(
        ["bash", str(ROOT / "scripts/install_labelstudio.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if r.returncode != 0:
        pytest.fail(
            f"installing Label Studio {LS_VERSION} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return venv


@pytest.fixture(scope="session")
def image_root(tmp_path_factory, isbi_dir) -> Path:
    """Local-files root: ``isbi/`` (a wide crop, a tall crop, a full section, another wide
    crop) for the REST tests, ``browser/`` (one full section) and ``dm/`` (six) for the
    browser tests."""
    root = tmp_path_factory.mktemp("ls-files")
    (root / "isbi").mkdir()
    (root / "browser").mkdir()
    for i, (name, crop) in enumerate(
        [
            ("0-wide.png", np.s_[64:448, :]),
            ("1-tall.png", np.s_[:, 96:416]),
            ("2-full.png", np.s_[:, :]),
            ("3-wide.png", np.s_[128:384, :]),
        ]
    ):
        em = np.asarray(Image.open(isbi_dir / "image" / f"{i}.png"))
        Image.fromarray(np.ascontiguousarray(em[crop])).save(root / "isbi" / name)
    em = np.asarray(Image.open(isbi_dir / "image" / "5.png"))
    Image.fromarray(em).save(root / "browser" / "section5.png")
    (root / "dm").mkdir()
    for i in range(10, 16):
        em = np.asarray(Image.open(isbi_dir / "image" / f"{i}.png"))
        Image.fromarray(em).save(root / "dm" / f"section{i}.png")
    # a held-out section (test split, never trained on) for the shipped model
    (root / "heldout").mkdir()
    em = np.asarray(Image.open(isbi_dir / "image" / "25.png"))
    Image.fromarray(em).save(root / "heldout" / "section25.png")
    return root


@pytest.fixture(scope="session")
def label_studio(ls_venv, image_root, tmp_path_factory):
    """A running Label Studio with the documented SSRF setting: yields (url, legacy token,
    data dir)."""
    data = tmp_path_factory.mktemp("ls-data")
    proc, url, log = start_label_studio(ls_venv, data, image_root, extra_env=SSRF_SETTING)
    try:
        wait_for(f"{url}/health", proc, log, timeout=600)
        yield url, LEGACY_TOKEN, data
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def ls(label_studio) -> LS:
    return LS(*label_studio[:2])


@pytest.fixture(scope="session")
def personal_token(ls) -> str:
    """The test user's personal access token (Label Studio makes one per user)."""
    return ls.call("POST", "/api/token/")["token"]


def start_backend(ls: LS, pat: str, d: Path, checkpoint: Path | None, **extra_env: str):
    """``pasam serve`` (on ``checkpoint``, or without one: the shipped model) downloading
    images from Label Studio with the personal access token ``pat``: (process, url, log)."""
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": pat,
        "DEVICE": "cpu",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # fine-tuning test: tiny runs, models saved next to the test model
        "PASAM_TRAIN_STEPS": "3",
        "PASAM_TRAIN_IMAGES_PER_STEP": "1",
        "PASAM_TRAIN_OBJECTS_PER_IMAGE": "1",
        "PASAM_MODEL_DIR": str(d / "models"),
    }
    for key in (
        "PASAM_CHECKPOINT",
        "LOCAL_FILES_DOCUMENT_ROOT",
        "PASAM_CACHE_DIR",
        "BASIC_AUTH_USER",
        "BASIC_AUTH_PASS",
        "PASAM_SAM_CHECKPOINT",
        "PASAM_TRAIN_EVERY_N_ANNOTATIONS",
        "PASAM_SYNC_MODEL_VERSION",
        "PASAM_WORKERS",
        "PASAM_TRAIN_PARTS",
    ):
        env.pop(key, None)
    env = {k: v for k, v in env.items() if not k.startswith("PASAM_AUTO")}
    env.update(extra_env)
    log = d / "pasam-serve.log"
    args = [sys.executable, "-m", "pasam_plugins.cli", "serve"]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*args, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", proc, log, timeout=300)
    except BaseException:
        stop(proc)
        raise
    return proc, url, log


@pytest.fixture(scope="session")
def backend(ls, personal_token, tmp_path_factory):
    """``pasam serve`` on a random-weight model used zoomed in (as this project's shipped
    small model), downloading images from Label Studio with a personal access token: yields
    (url, log, checkpoint, models dir). Automatic pre-annotation of tasks without prompts is
    off here (``PASAM_AUTO=0``: random weights find no objects, and these tests check that a
    task without prompts gets no prediction); :func:`shipped_backend` has it on."""
    from labelstudio_support import zoomed_test_checkpoint

    d = tmp_path_factory.mktemp("pasam-serve")
    ckpt = zoomed_test_checkpoint(d / "zoomed.safetensors", seed=0)
    proc, url, log = start_backend(ls, personal_token, d, ckpt, PASAM_AUTO="0")
    try:
        yield url, log, ckpt, d / "models"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def shipped_backend(ls, personal_token, tmp_path_factory):
    """``pasam serve`` without a checkpoint: the shipped pasam_micro, with automatic
    pre-annotation on a coarse point grid (cheap on a CPU) and lower quality thresholds
    (pasam_micro's predicted IoU and stability on EM cells stay below the defaults, 0.88 and
    0.95, so with those it keeps no object of section 25): yields (url, log)."""
    d = tmp_path_factory.mktemp("pasam-serve-shipped")
    proc, url, log = start_backend(
        ls,
        personal_token,
        d,
        None,
        PASAM_AUTO_POINTS_PER_SIDE="8",
        PASAM_AUTO_PRED_IOU="0.5",
        PASAM_AUTO_STABILITY="0.5",
    )
    try:
        yield url, log
    finally:
        stop(proc)
