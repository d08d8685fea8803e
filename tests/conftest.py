"""Shared fixtures: the real EM stack in ../shared and tiny random-weight PA-SAM models."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (the ISBI 2012 EM stack and the DSB 2018 nuclei subset), read in place."""
    path = SHARED / "data"
    for name in ("isbi2012-em", "dsb2018-nuclei"):
        if not (path / name / "image").is_dir():
            pytest.fail(f"the shared data set {name} is missing at {path / name}")
    return path


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 EM stack (30 sections, 512x512 uint8) with labels, read in place."""
    path = SHARED / "data" / "isbi2012-em"
    if not (path / "image" / "0.png").is_file():
        pytest.fail(f"the shared EM data set is missing at {path}")
    return path


@pytest.fixture(scope="session")
def golden_fixture() -> Path:
    path = SHARED / "fixtures" / "official_pasam_vit_b_public.pt"
    if not path.is_file():
        pytest.fail(f"the golden fixture is missing at {path}")
    return path


@pytest.fixture(scope="session")
def em_section(isbi_dir: Path) -> np.ndarray:
    """Section 0 of the EM stack as a 512x512 uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(isbi_dir / "image" / "0.png"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `make-test-checkpoint` model file (vit_tiny, random weights, with adapter)."""
    from pasam_plugins.testing import make_test_checkpoint

    return make_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", seed=0)


@pytest.fixture()
def tiny_model():
    """A fresh vit_tiny PA-SAM with random weights (seed 0)."""
    from pasam_plugins.testing import make_test_model

    return make_test_model(seed=0)
