"""Small random-weight models for tests and offline demos (no pretrained weights needed)."""

from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .modeling import PASam, build_pasam


def make_test_model(
    *, seed: int = 0, variant: str = "vit_tiny", guide_mode: str = "reference", adapter: bool = True
) -> PASam:
    """A deterministic random-weight PA-SAM (``vit_tiny`` by default: a few MB, fast on CPU)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_pasam(variant, adapter=adapter, guide_mode=guide_mode)  # type: ignore[arg-type]
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def make_test_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    variant: str = "vit_tiny",
    guide_mode: str = "reference",
    adapter: bool = True,
) -> Path:
    """Write a random-weight SAM + adapter in this project's format; returns the path.

    The metadata says ``"untrained": true`` so every tool can tell users plainly that
    results come from random weights.
    """
    model = make_test_model(seed=seed, variant=variant, guide_mode=guide_mode, adapter=adapter)
    return save_checkpoint(
        model,
        path,
        metadata={"untrained": True, "provenance": {"kind": "make-test-checkpoint", "seed": seed}},
    )
