"""The guide input (image + Canny edges) of both guide modes."""

import numpy as np
import torch

from pasam_plugins.guide import _wrap_to_uint8, guide_input


def test_float_to_uint8_cast_matches_the_reference_semantics():
    x = np.array([-1.5, -0.2, 2.6, 0.0, 255.9, -256.5], dtype=np.float32)
    assert _wrap_to_uint8(x).tolist() == [255, 0, 2, 0, 255, 0]


def test_guide_modes_differ_and_have_the_guide_shape():
    rng = np.random.default_rng(0)
    resized = np.zeros((1024, 700, 3), np.uint8)
    resized[200:600, 100:500] = 200
    resized += rng.integers(0, 5, resized.shape, dtype=np.uint8)
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    x = torch.nn.functional.pad((x - mean) / std, (0, 1024 - 700, 0, 0))
    ref = guide_input("reference", x)
    img = guide_input("image", x, resized)
    assert ref.shape == img.shape == (1, 4, 256, 256)
    torch.testing.assert_close(ref[:, :3], img[:, :3])
    edges = img[0, 3]
    assert set(torch.unique(edges).tolist()) <= {0.0, 1.0}
    # the square's border (rows 50 and 150 at 1/4 scale) is an edge in the real image
    assert edges[48:53, 30:120].sum() > 0 and edges[100, 60] == 0
    assert not torch.equal(ref[:, 3], img[:, 3])
