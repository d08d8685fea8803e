"""PLM and PMM (arXiv 2403.09199) on frozen tiny models: identity when untrained, outputs change
when trained, a few steps lower the loss, frozen weights stay bit-identical, the PMM loss reaches
the PLM and is not saved, files round-trip, fine-tuning and the CLI offer the choice."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_train import synth
from typer.testing import CliRunner

from pasam_plugins.checkpoint import (
    DELTA_PREFIXES,
    load_model,
    read_metadata,
    save_checkpoint,
    save_finetuned,
)
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.prompt_learning import (
    PointMatchingModule,
    attach_plm,
    boundary_targets,
    pmm_loss,
)
from pasam_plugins.testing import make_test_hq_model, make_test_model
from pasam_plugins.train.datasets import Sample
from pasam_plugins.train.finetune import finetune, prepare_samples
from pasam_plugins.train.trainer import (
    TrainConfig,
    Trainer,
    image_loss,
    parse_parts,
    trainable_names,
)

VARIANT = "vit_tiny256"


def _samples(n: int) -> list[Sample]:
    return [Sample.from_arrays(f"s{i}", *synth(i), instances="labels") for i in range(n)]


def _decode(model, use_adapter: bool = True):
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 16, 16)
    guide = None
    if model.uses_guide:
        gin = torch.randn(1, 16, 16, 64) if model.family == "hq-sam" else torch.rand(1, 4, 64, 64)
        guide = model.encode_guide(gin, emb)
    pts = (torch.tensor([[[100.0, 70.0], [30.0, 40.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[50.0, 30.0, 160.0, 110.0]])
    with torch.no_grad():
        return model.decode(
            emb, guide=guide, points=pts, boxes=box, use_adapter=use_adapter, mining="off"
        )


def test_parse_parts():
    assert parse_parts("adapter,plm") == ("adapter", "plm")
    assert parse_parts(" plm , pmm ") == ("plm", "pmm")
    for bad in ("pmm", "sam,plm", "adapter,hq", "lora", ""):
        with pytest.raises(ValueError):
            parse_parts(bad)


@pytest.mark.parametrize("kind", ["sam", "pasam", "hq"])
def test_untrained_plm_is_the_identity_and_a_trained_one_changes_outputs(kind):
    if kind == "hq":
        model = make_test_hq_model(seed=0, variant=VARIANT)
    else:
        model = make_test_model(seed=0, variant=VARIANT, adapter=kind == "pasam")
    before = _decode(model)
    attach_plm(model, seed=0)
    assert model.plm is not None and model.origin.plm and "+ PLM" in model.method_name
    n = sum(p.numel() for p in model.plm.parameters())
    assert 1.3e6 < n < 1.7e6  # the paper's PLM: 1.6 M parameters at width 256
    same = _decode(model)
    assert torch.equal(before.masks, same.masks)  # zero-initialized offset: bit-identical
    assert torch.equal(before.iou_predictions, same.iou_predictions)
    with torch.no_grad():
        model.plm.offset.weight.normal_(0, 0.05)
    changed = _decode(model)
    assert not torch.allclose(before.masks, changed.masks)
    # the additions switched off: the PLM takes no part
    plain = _decode(model, use_adapter=False)
    model.mask_decoder.plm = None
    assert torch.equal(plain.masks, _decode(model, use_adapter=False).masks)


def _fixed_loss(model, prepared) -> float:
    total = 0.0
    with torch.no_grad():
        for p in prepared:
            rng = np.random.default_rng(0)
            objs = list(range(len(p.objects)))
            total += float(image_loss(model, p, objs, rng, prompt_kinds=("points",)).total)
    return total / len(prepared)


@pytest.mark.slow
@pytest.mark.parametrize("train", ["plm", "plm,pmm", "adapter,plm"])
def test_finetune_lowers_the_loss_and_keeps_frozen_weights_bit_identical(train):
    base = make_test_model(seed=1, variant=VARIANT, adapter=False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    samples = _samples(2)
    result = finetune(
        base,
        samples,
        steps=10,
        lr=3e-3,
        images_per_step=2,
        objects_per_image=3,
        prompt_kinds=("points",),
        num_points=1,
        train=train,
    )
    model = result.model
    assert model.plm is not None and model.has_adapter == ("adapter" in train)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base untouched
    trained = set(trainable_names(model, train))
    after = model.state_dict()
    for k, v in before.items():
        if k not in trained:
            assert torch.equal(v, after[k]), k  # frozen: bit-identical
    assert any(
        not torch.equal(p, torch.zeros_like(p)) for p in model.plm.offset.parameters()
    )  # the PLM learned an offset
    prepared = prepare_samples(model, samples)
    base_prepared = prepare_samples(base, samples)
    if "adapter" not in train:  # same decoder path: the loss of the base vs the trained model
        assert _fixed_loss(model, prepared) < _fixed_loss(base, base_prepared)
    assert result.report.losses[-1] < result.report.losses[0]


def test_pmm_loss_reaches_the_plm_and_the_pmm_is_not_saved(tmp_path):
    model = make_test_model(seed=2, variant=VARIANT, adapter=False)
    attach_plm(model)
    with torch.no_grad():
        model.plm.offset.weight.normal_(0, 0.05)
    pmm = PointMatchingModule(feature_dim=32)
    n = sum(p.numel() for p in pmm.parameters())
    assert 1.0e6 < n < 1.5e6  # the paper's PMM: 1.2 M parameters
    emb = torch.randn(1, 256, 16, 16)
    gt = torch.zeros(1, 1, 256, 256)
    gt[..., 60:180, 70:200] = 1
    logits = torch.zeros(1, 1, 64, 64)
    logits[..., 20:40, 20:44] = 5.0  # a predicted mask with a boundary
    out = model.decode(
        emb, guide=None, boxes=torch.tensor([[60.0, 50.0, 210.0, 190.0]]), return_features=True
    )
    assert out.mask_features is not None and out.mask_features.shape == (1, 32, 64, 64)
    loss = pmm_loss(pmm, out.mask_features, logits, gt)
    assert loss is not None and loss > 0
    loss.backward()
    grads = [p.grad for p in model.plm.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)

    # a trainer with the PMM: the term is logged, the file holds the PLM but no PMM
    model2 = make_test_model(seed=3, variant=VARIANT, adapter=False)
    attach_plm(model2)
    base_path = save_checkpoint(
        make_test_model(seed=3, variant=VARIANT, adapter=False), tmp_path / "b.safetensors"
    )
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        train="plm,pmm",
        epochs=2,
        batch_size=2,
        jitter=None,
        flip=False,
        loss_size=256,
        prompt_kinds=("box",),
        save_every=0,
        amp=False,
    )
    trainer = Trainer(
        model2,
        _samples(2),
        config=cfg,
        progress=False,
        provenance={"base_checkpoint": str(base_path)},
    )
    result = trainer.run()
    assert all("pmm" in h for h in result.history)
    assert result.checkpoint.name == "plm+pmm.safetensors"
    with safe_open(str(result.checkpoint), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("mask_decoder.plm.") for k in keys)
    assert not any("pmm" in k for k in keys)
    assert all(k.startswith(tuple(f"mask_decoder.{p}" for p in DELTA_PREFIXES)) for k in keys)
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert any(k.startswith("pmm.") for k in state["trainable"])
    loaded = load_model(result.checkpoint)
    assert loaded.plm is not None
    a, b = model2.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_boundary_targets_point_to_the_ground_truth_contour():
    gt = np.zeros((64, 64), bool)
    gt[20:40, 20:40] = True
    got = boundary_targets(gt, gt)
    assert got is not None and np.abs(got[1]).max() * 64 < 0.5  # on the contour already
    pred = np.zeros_like(gt)
    pred[23:37, 23:37] = True  # 3 px inside
    pts, offs = boundary_targets(pred, gt)
    d = np.linalg.norm(offs, axis=1) * 64
    assert np.all(d > 2.5) and np.all(d < 4.5)
    assert boundary_targets(np.zeros_like(gt), gt) is None


def test_plm_file_round_trip_and_choice_from_the_environment(tmp_path, monkeypatch):
    base = make_test_model(seed=4, variant=VARIANT, adapter=True, guide_mode="image")
    base_path = save_checkpoint(base, tmp_path / "pasam.safetensors")
    model = load_model(base_path)
    monkeypatch.setenv("PASAM_TRAIN_PARTS", "plm")  # what Label Studio / napari pass through
    result = finetune(model, _samples(1), steps=2, objects_per_image=2, prompt_kinds=("box",))
    tuned = result.model
    assert tuned.plm is not None and tuned.has_adapter
    assert model.plm is None  # the caller's model is not modified
    path = save_finetuned(tuned, tmp_path / "tuned.safetensors", provenance={"steps": 2})
    meta = read_metadata(path)
    assert meta["plm"] is True and meta["contents"] == "adapter"
    assert meta["base_checkpoint"] == str(base_path.resolve())
    loaded = load_model(path)
    assert loaded.plm is not None and loaded.origin.plm
    assert "prompt learning module" in loaded.origin.describe()
    img = synth(7)[0]
    p1, p2 = PASamPredictor(tuned, device="cpu"), PASamPredictor(loaded, device="cpu")
    p1.set_image(img)
    p2.set_image(img)
    kw = {"point_coords": np.array([[60.0, 40.0]]), "point_labels": np.array([1])}
    a, b = p1.predict(**kw), p2.predict(**kw)
    assert np.array_equal(a.low_res_logits, b.low_res_logits)
    monkeypatch.setenv("PASAM_TRAIN_PARTS", "sam")
    with pytest.raises(ValueError, match="frozen model"):
        finetune(model, _samples(1), steps=1)


@pytest.mark.slow
def test_cli_trains_adapter_and_plm(tmp_path, tiny_checkpoint):
    from PIL import Image

    from pasam_plugins.cli import app

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    img, lab = synth(0)
    Image.fromarray(img).save(data / "images" / "0.png")
    Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(data / "masks" / "0.png")
    out = tmp_path / "run"
    args = ["train", f"components:{data}", "-c", str(tiny_checkpoint), "--train", "adapter,plm"]
    args += ["--out-dir", str(out), "--batch-size", "1", "--no-jitter", "--loss-size", "256"]
    res = CliRunner().invoke(app, [*args, "--max-steps", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    meta = read_metadata(out / "adapter+plm.safetensors")
    assert meta["plm"] is True and meta["has_adapter"] is True
    bad = CliRunner().invoke(app, [*args[:5], "pmm", *args[6:]], catch_exceptions=False)
    assert bad.exit_code != 0 and "auxiliary loss" in bad.output
