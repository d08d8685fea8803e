"""HQ-SAM on the official ``segment-anything-hq`` modules: exact parity with the package's own
predictor, official-layout loading like the package's loader, files, cache, segmenter, training."""

import warnings
from functools import partial

import numpy as np
import pytest
import torch

from pasam_plugins.cache import EmbeddingCache
from pasam_plugins.checkpoint import (
    DELTA_PREFIXES,
    load_model,
    read_metadata,
    save_checkpoint,
)
from pasam_plugins.hq import HQ_PREFIXES, HQSam, with_hq
from pasam_plugins.modeling import ENCODER_CONFIGS
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import Segmenter, ZoomSettings
from pasam_plugins.testing import make_test_hq_model, make_test_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from segment_anything_hq.modeling import (
        ImageEncoderViT,
        MaskDecoderHQ,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )
    from segment_anything_hq.predictor import SamPredictor

VARIANT = "vit_tiny256"  # the package's modules at a small input size (fast on CPU)


def package_sam(model: HQSam) -> Sam:
    """The package's own ``Sam`` (its classes, not this project's) with ``model``'s weights."""
    cfg = ENCODER_CONFIGS[model.variant]
    ref = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            img_size=cfg.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(cfg.grid, cfg.grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            vit_dim=cfg.embed_dim,
        ),
    )
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


def _image(seed: int = 0, h: int = 150, w: int = 220) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    img[40:100, 60:150] = 210
    return img


PROMPTS = [
    {"point_coords": np.array([[100.0, 70.0]]), "point_labels": np.array([1])},
    {"box": np.array([50.0, 30.0, 160.0, 110.0]), "multimask_output": False},
    {
        "point_coords": np.array([[100.0, 70.0], [20.0, 20.0]]),
        "point_labels": np.array([1, 0]),
        "box": np.array([50.0, 30.0, 160.0, 110.0]),
        "multimask_output": False,
    },
    {
        "point_coords": np.array([[100.0, 70.0], [130.0, 60.0]]),
        "point_labels": np.array([1, 1]),
        "multimask_output": True,
    },
]


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_predictor_equals_the_packages_predictor_exactly(hq_token_only):
    model = make_test_hq_model(seed=1, variant=VARIANT)
    model.mask_decoder.hq_token_only = hq_token_only
    ref = SamPredictor(package_sam(model))
    ours = PASamPredictor(model, device="cpu")
    img = _image()
    ours.set_image(img)
    ref.set_image(img)
    for kw in PROMPTS:
        got = ours.predict(**kw, return_logits=True)
        want = ref.predict(**kw, return_logits=True, hq_token_only=hq_token_only)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            assert np.array_equal(a, b), kw
        assert got.uncertainty is None and got.mined_points is None  # PA-SAM's extras only
    # a refinement round: the previous low-res logits back as mask prompt
    kw = {"point_coords": np.array([[100.0, 70.0]]), "point_labels": np.array([1])}
    low = ours.predict(**kw, multimask_output=False).low_res_logits
    got = ours.predict(**kw, mask_input=low, multimask_output=False, return_logits=True)
    want = ref.predict(
        **kw,
        mask_input=low,
        multimask_output=False,
        return_logits=True,
        hq_token_only=hq_token_only,
    )
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    # the thresholded masks too
    want_masks = ref.predict(**PROMPTS[1], hq_token_only=hq_token_only)[0]
    assert np.array_equal(ours.predict(**PROMPTS[1]).masks, want_masks)


def test_without_additions_the_decoder_is_exactly_sams():
    from segment_anything.modeling import MaskDecoder

    model = make_test_hq_model(seed=2, variant=VARIANT)
    dec = model.mask_decoder
    sam_dec = MaskDecoder(transformer_dim=256, transformer=dec.transformer).eval()
    sam_dec.load_state_dict(
        {k: v for k, v in dec.state_dict().items() if not k.startswith(HQ_PREFIXES)}
    )
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 16, 16)
    pts = (torch.tensor([[[100.0, 70.0], [30.0, 40.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[50.0, 30.0, 160.0, 110.0]])
    with torch.no_grad():
        for multimask in (True, False):
            sparse, dense = model.prompt_encoder(points=pts, boxes=box, masks=None)
            want_m, want_i = sam_dec(
                emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
            )
            out = model.decode(
                emb,
                guide=None,
                points=pts,
                boxes=box,
                multimask_output=multimask,
                use_adapter=False,
            )
            assert torch.equal(out.masks, want_m) and torch.equal(out.iou_predictions, want_i)
            assert out.hq_masks is None


@pytest.mark.slow
def test_official_layout_file_loads_as_the_packages_loader_does(tmp_path):
    """Golden-style: a state dict from the package's own vit_b builder, written as the
    official sam_hq_vit_b.pth is (a plain state dict), loads into the same weights as the
    package's loader gives, and both decode the same masks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything_hq import sam_model_registry

    torch.manual_seed(0)
    built = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_hq_vit_b.pth"
    torch.save(built.state_dict(), path)
    del built
    ours = load_model(path)
    assert isinstance(ours, HQSam) and ours.variant == "vit_b"
    assert ours.origin.kind == "official-hq-sam" and ours.origin.family == "hq-sam"
    assert "HQ-SAM" in ours.origin.describe() and "no uncertainty map" in ours.origin.describe()
    ref = sam_model_registry["vit_b"](checkpoint=str(path)).eval()
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    early = torch.randn(1, 64, 64, 768, generator=gen)
    pred = PASamPredictor(ours, device="cpu")
    with torch.no_grad():
        pred.set_embedding(emb, (600, 800), guide=ours.encode_guide(early, emb))
    pts = torch.tensor([[[512.0, 300.0], [100.0, 90.0]]])
    lab = torch.tensor([[1, 0]])
    box = torch.tensor([[300.0, 200.0, 700.0, 500.0]])
    with torch.no_grad():
        for multimask in (True, False):
            got = pred.predict_torch(pts, lab, box, None, multimask, return_logits=True)
            sparse, dense = ref.prompt_encoder(points=(pts, lab), boxes=box, masks=None)
            masks, iou = ref.mask_decoder(
                image_embeddings=emb,
                image_pe=ref.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                hq_token_only=False,
                interm_embeddings=[early],
            )
            assert torch.equal(got.low_res_logits, masks) and torch.equal(got.scores, iou)


def test_hq_delta_file_names_its_base_and_round_trips(tmp_path):
    base = make_test_model(seed=3, variant=VARIANT, adapter=False)
    base_path = save_checkpoint(base, tmp_path / "sam.safetensors")
    model = with_hq(load_model(base_path), seed=4)
    assert model.origin.complete_base == str(base_path)
    with torch.no_grad():  # make the HQ parts differ from any fresh init
        for n, p in model.named_parameters():
            if n.startswith(tuple(f"mask_decoder.{q}" for q in HQ_PREFIXES)):
                p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(
        model,
        tmp_path / "hq.safetensors",
        adapter_only=True,
        metadata={"base_checkpoint": str(base_path)},
    )
    meta = read_metadata(path)
    assert meta["family"] == "hq-sam" and meta["contents"] == "adapter"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(
        k.startswith(tuple(f"mask_decoder.{p}" for p in DELTA_PREFIXES)) for k in keys
    )
    assert any(k.startswith("mask_decoder.hf_token") for k in keys)
    loaded = load_model(path)
    assert isinstance(loaded, HQSam) and loaded.origin.family == "hq-sam"
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_segmenter_and_disk_cache(tmp_path):
    model = make_test_hq_model(seed=5, variant=VARIANT)
    img = _image(1, 300, 260)
    pred = PASamPredictor(model, device="cpu", cache=EmbeddingCache(disk_dir=tmp_path))
    pred.set_image(img)
    pred.set_image(img)
    assert pred.encoder_runs == 1
    assert tuple(pred.guide.shape) == model.guide_shape == (1, 32, 64, 64)
    first = pred.predict(box=np.array([50, 30, 160, 110]), multimask_output=False)
    # a new process: the embedding and HQ features come from disk, the masks are the same
    again = PASamPredictor(model, device="cpu", cache=EmbeddingCache(disk_dir=tmp_path))
    again.set_image(img)
    assert again.encoder_runs == 0
    second = again.predict(box=np.array([50, 30, 160, 110]), multimask_output=False)
    assert np.array_equal(first.low_res_logits, second.low_res_logits)
    # a precomputed embedding alone lacks the HQ features: refused, not guessed
    with pytest.raises(ValueError, match="needs its per-image features"):
        pred.set_embedding(pred.features, img.shape[:2])

    # whole-image and zoomed segmentation through the one Segmenter
    for zoom in (None, ZoomSettings()):
        seg = Segmenter(PASamPredictor(model, device="cpu"), zoom=zoom)
        seg.set_image(img)
        obj = seg.segment(points=[[100, 70]], labels=[1])
        assert obj.uncertainty is None and obj.suggestions() == []
        assert obj.mask.shape == img.shape[:2]
        box = seg.segment(box=[50, 30, 160, 110])
        assert box.mask.shape == img.shape[:2]


def test_train_hq_changes_only_hq_parts_and_lowers_the_loss(tmp_path):
    from test_train import synth

    from pasam_plugins.train.datasets import Sample
    from pasam_plugins.train.trainer import TrainConfig, Trainer, prepare_for_training

    base = make_test_model(seed=6, variant=VARIANT, adapter=False)
    model = prepare_for_training(base, "hq", seed=0)
    assert isinstance(model, HQSam)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = [Sample.from_arrays(f"s{i}", *synth(i), instances="labels") for i in range(2)]
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        train="hq",
        epochs=6,
        batch_size=2,
        jitter=None,
        flip=False,
        loss_size=256,
        prompt_kinds=("box",),
        save_every=0,
        amp=False,
        lr=3e-3,
    )
    trainer = Trainer(model, samples, config=cfg, progress=False)
    result = trainer.run()
    losses = [h["total"] for h in result.history]
    assert losses[-1] < losses[0]
    after = model.state_dict()
    hq = tuple(f"mask_decoder.{p}" for p in HQ_PREFIXES)
    for k, v in before.items():
        if k.startswith(hq):
            continue
        assert torch.equal(v, after[k]), k  # SAM stays bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(hq))
    assert result.checkpoint is not None and result.checkpoint.name == "hq.safetensors"
    assert read_metadata(result.checkpoint)["family"] == "hq-sam"


def test_cli_predicts_with_hq_sam_and_says_it_has_no_uncertainty(tmp_path, isbi_dir):
    import json

    from typer.testing import CliRunner

    from pasam_plugins.cli import app

    ckpt = save_checkpoint(make_test_hq_model(seed=7), tmp_path / "hq.safetensors")
    out = tmp_path / "out"
    env = {"PASAM_CACHE_DIR": str(tmp_path / "cache")}
    args = ["predict", str(isbi_dir / "image" / "5.png"), "-c", str(ckpt), "--box"]
    args += ["180,200,330,340", "--out-dir", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "5_prediction.json").read_text())
    assert record["model"] == "HQ-SAM (HQ output token; no uncertainty map or mined points)"
    assert (out / "5_mask.png").is_file() and not (out / "5_uncertainty.tif").exists()
    info = CliRunner().invoke(app, ["info", "--checkpoint", str(ckpt)], env=env)
    assert info.exit_code == 0, info.output
    assert "HQ-SAM" in info.output and "no uncertainty map" in info.output
