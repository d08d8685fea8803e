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


def make_test_hq_model(*, seed: int = 0, variant: str = "vit_tiny"):
    """A deterministic random-weight HQ-SAM (:mod:`pasam_plugins.hq`; ``vit_tiny`` default)."""
    from .hq import build_hq

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_hq(variant)
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


def sam_reference(model: PASam):
    """``segment_anything``'s own ``Sam`` on the same weights as ``model`` (encoders shared,
    SAM's ``MaskDecoder`` with the decoder's SAM weights): the reference that SAM's
    predictor and automatic mask generator run, for parity tests and benchmarks."""
    from segment_anything.modeling import MaskDecoder, Sam

    dec = model.mask_decoder
    sam_dec = MaskDecoder(transformer_dim=dec.transformer_dim, transformer=dec.transformer)
    sam_dec.load_state_dict(
        {
            k: v
            for k, v in dec.state_dict().items()
            if not k.startswith(("guiding_conv", "prompt_adapter", "plm."))
        }
    )
    return Sam(
        image_encoder=model.image_encoder,
        prompt_encoder=model.prompt_encoder,
        mask_decoder=sam_dec,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
    ).eval()
