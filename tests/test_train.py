"""Training evidence with tiny random-weight models: the loss goes down, only the trainable
set changes, resuming equals training without interruption, fine-tuning controls."""

import json

import numpy as np
import pytest
import torch

from pasam_plugins.checkpoint import load_model, read_metadata, save_finetuned
from pasam_plugins.train.datasets import Dataset, Sample, SampleError
from pasam_plugins.train.finetune import finetune, prepare_samples
from pasam_plugins.train.trainer import (
    STATE_NAME,
    TrainConfig,
    Trainer,
    augment,
    image_loss,
    trainable_names,
)

TRAINABLE_PREFIXES = (
    "mask_decoder.guiding_conv.",
    "mask_decoder.prompt_adapter.",
    "mask_decoder.output_upscaling.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.mask_tokens.",
)


def synth(seed: int, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy image with three bright discs, one label each."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(3):
        cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(8, 18)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m] = 200
        lab[m] = k + 1
    return img, lab


def _samples(n: int) -> list[Sample]:
    return [Sample.from_arrays(f"s{i}", *synth(i), instances="labels") for i in range(n)]


def _fixed_loss(model, prepared) -> float:
    """Loss on fixed box prompts without mining (deterministic)."""
    total = 0.0
    with torch.no_grad():
        for p in prepared:
            rng = np.random.default_rng(0)
            objs = list(range(len(p.objects)))
            total += float(image_loss(model, p, objs, rng, prompt_kinds=("box",)).total)
    return total / len(prepared)


def test_trainable_set_is_the_reference_one(tiny_model):
    names = trainable_names(tiny_model)
    assert names and all(n.startswith(TRAINABLE_PREFIXES) for n in names)
    for prefix in TRAINABLE_PREFIXES:
        assert any(n.startswith(prefix) for n in names), prefix
    assert not any(n.startswith(("image_encoder", "prompt_encoder")) for n in names)
    assert not any("transformer" in n or "iou_prediction_head" in n for n in names)


@pytest.mark.slow
def test_finetune_lowers_the_loss_and_changes_only_the_trainable_set(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    samples = _samples(2)
    prepared = prepare_samples(tiny_model, samples)
    loss0 = _fixed_loss(tiny_model, prepared)
    seen = []
    result = finetune(
        tiny_model,
        samples,
        steps=4,
        images_per_step=1,
        objects_per_image=2,
        progress_callback=lambda s, n, info: seen.append((s, n, info["loss"])),
    )
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(n == 4 for _, n, _ in seen)
    tuned = result.model
    loss1 = _fixed_loss(tuned, prepared)
    assert loss1 < 0.8 * loss0, (loss0, loss1)
    # the caller's model is untouched
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the new model differs from it exactly in the trainable set
    trainable = set(trainable_names(tuned))
    after = tuned.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= trainable
    assert {k.rsplit(".", 1)[0].split(".")[1] for k in changed} >= {
        "guiding_conv",
        "prompt_adapter",
        "output_upscaling",
        "output_hypernetworks_mlps",
    }
    report = result.report
    assert report.steps == 4 and report.images == 2 and report.objects == 6


def test_finetune_stops_when_asked_and_skips_bad_samples(tiny_model, tmp_path, tiny_checkpoint):
    def broken():
        raise SampleError("cannot decode")

    samples = [Sample("bad", broken), *_samples(1)]
    calls = []
    result = finetune(
        load_model(tiny_checkpoint),
        samples,
        steps=50,
        images_per_step=1,
        objects_per_image=1,
        should_stop=lambda: len(calls) >= 1,
        progress_callback=lambda s, n, info: calls.append(s),
    )
    report = result.report
    assert report.stopped_early and report.steps == 1 and calls == [1]
    assert report.skipped == [("bad", "cannot decode")]
    tuned = result.model
    assert tuned.origin.kind == "finetuned" and tuned.origin.untrained
    path = save_finetuned(tuned, tmp_path / "ft.safetensors", provenance={"steps": report.steps})
    meta = read_metadata(path)
    assert meta["contents"] == "adapter" and meta["provenance"]["steps"] == 1
    assert meta["untrained"] is True  # fine-tuned on a random-weight SAM: still flagged
    assert meta["base_checkpoint"] == str(tiny_checkpoint.resolve())
    assert tuned.origin.file == str(path) and tuned.origin.complete_base == str(
        tiny_checkpoint.resolve()
    )
    reloaded = load_model(path)  # the base is found through the file's metadata
    for k, v in tuned.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    with pytest.raises(ValueError, match="no usable training sample"):
        finetune(tiny_model, [Sample("bad", broken)], steps=1)


def test_save_finetuned_saves_models_without_a_complete_base_whole(tiny_model, tmp_path):
    # built in memory (random weights): no file to name as base -> the whole model
    tuned = finetune(tiny_model, _samples(1), steps=1, images_per_step=1).model
    path = save_finetuned(tuned, tmp_path / "whole.safetensors", provenance={"steps": 1})
    meta = read_metadata(path)
    assert meta["contents"] == "full" and "base_checkpoint" not in meta
    again = load_model(path)
    assert again.origin.kind == "pasam-full" and again.origin.complete_base == str(path)
    for k, v in tuned.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_fine_tuning_a_model_loaded_from_an_adapter_file_saves_an_adapter_on_its_base(
    tiny_checkpoint, tmp_path
):
    first = finetune(load_model(tiny_checkpoint), _samples(1), steps=1, images_per_step=1)
    adapter = save_finetuned(first.model, tmp_path / "a.safetensors", provenance={"steps": 1})
    start = load_model(adapter)
    assert start.origin.kind == "pasam-adapter"
    second = finetune(start, _samples(1), steps=1, images_per_step=1).model
    path = save_finetuned(
        second, tmp_path / "b.safetensors", provenance={"steps": 1, "base": str(adapter)}
    )
    meta = read_metadata(path)
    assert meta["contents"] == "adapter"
    assert meta["base_checkpoint"] == str(tiny_checkpoint.resolve())
    assert meta["provenance"]["base"] == str(adapter)
    # nothing is lost: the adapter file on the complete base is the fine-tuned model
    again = load_model(path)
    for k, v in second.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert any(not torch.equal(start.state_dict()[k], v) for k, v in second.state_dict().items())


def _trainer(model, out, **kw):
    cfg = TrainConfig(
        out_dir=str(out),
        epochs=2,
        batch_size=1,
        lr_drop_epoch=1,
        mining_start_epoch=1,
        jitter=None,
        flip=True,
        loss_size=256,
        save_every=2,
        objects_per_image=1,
        seed=3,
        **kw,
    )
    return Trainer(
        model, _samples(2), config=cfg, progress=False, provenance={"data": ["synthetic"]}
    )


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(tmp_path, tiny_checkpoint):
    full = _trainer(load_model(tiny_checkpoint), tmp_path / "full")
    result = full.run()
    assert result.step == 4 and full.total_steps == 4
    # interrupted after 2 steps (the step-2 checkpoint), then resumed in a new process state
    part = _trainer(load_model(tiny_checkpoint), tmp_path / "part")
    part.run(should_stop=lambda: part.step >= 2)
    resumed = _trainer(load_model(tiny_checkpoint), tmp_path / "part")
    resumed.resume()
    assert resumed.step == 2
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the learning rate decayed per epoch and mining switched on in epoch 1
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["mining"] for r in log] == ["off", "off", "gumbel", "gumbel"]
    assert log[0]["lr"] == pytest.approx(1e-3) and log[-1]["lr"] == pytest.approx(1e-5)
    # frozen weights bit-identical to the base; every trainable one changed except the
    # hypernetwork MLPs of masks 1..3, which single-mask training never uses
    base = load_model(tiny_checkpoint).state_dict()
    trainable = set(trainable_names(full.model))
    unused = {
        k
        for k in trainable
        if k.startswith("mask_decoder.output_hypernetworks_mlps.")
        and not k.startswith("mask_decoder.output_hypernetworks_mlps.0.")
    }
    changed = {k for k, v in a.items() if not torch.equal(v, base[k])}
    assert changed == trainable - unused


def test_checkpoints_logs_and_plot(tmp_path, tiny_checkpoint):
    val = Dataset("val", [Sample.from_arrays("v0", *synth(9), instances="labels", dataset="val")])
    trainer = _trainer(load_model(tiny_checkpoint), tmp_path, max_steps=2, val_every=2)
    trainer.val = [val]
    trainer.cfg.save_every = 1
    result = trainer.run()
    out = tmp_path
    assert result.checkpoint == out / "adapter.safetensors"
    assert (out / "adapter-step000001.safetensors").is_file()
    assert (out / STATE_NAME).is_file() and (out / "curves.png").stat().st_size > 1000
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp files
    meta = read_metadata(out / "adapter.safetensors")
    prov = meta["provenance"]
    assert prov["kind"] == "pasam train" and prov["step"] == 2 and prov["data"] == ["synthetic"]
    assert prov["config"]["batch_size"] == 1 and prov["final_loss"] > 0
    model = load_model(out / "adapter.safetensors", sam_checkpoint=tiny_checkpoint)
    for k, v in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.cpu()), k
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    # validation ran at step 2 (val_every=2) on the 3 objects of the validation image
    assert "val_miou" not in records[0]
    assert 0.0 <= records[1]["val_miou"] <= 1.0 and 0.0 <= records[1]["val_mbiou"] <= 1.0
    assert "val_miou/val" in records[1] and prov["validation"]["val_miou"] == records[1]["val_miou"]
    # a resume with other settings is refused with a clear message
    other = Trainer(
        load_model(tiny_checkpoint),
        _samples(2),
        config=TrainConfig(out_dir=str(out), batch_size=2, jitter=None),
        progress=False,
    )
    with pytest.raises(ValueError, match="batch_size"):
        other.resume()


def test_training_with_large_scale_jitter_runs_uncached(tmp_path, tiny_checkpoint):
    cfg = TrainConfig(
        out_dir=str(tmp_path),
        batch_size=1,
        max_steps=1,
        loss_size=256,
        save_every=0,
        jitter=(0.3, 1.0),
    )
    trainer = Trainer(load_model(tiny_checkpoint), _samples(1), config=cfg, progress=False)
    assert trainer.cache is None  # every step encodes a new jittered image
    result = trainer.run()
    assert result.step == 1 and result.history[0]["images"] == 1
    assert result.history[0]["total"] > 0
    with pytest.raises(ValueError, match="without large-scale jitter"):
        Trainer(
            load_model(tiny_checkpoint),
            _samples(1),
            progress=False,
            config=TrainConfig(out_dir=str(tmp_path), cache_embeddings=True),
        )


def test_augment_flip_and_jitter_keep_image_and_labels_aligned():
    img, lab = synth(5)
    img = img.copy()
    img[lab == 0] = 0
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = augment(img, lab, rng, flip=True, jitter=(0.5, 1.5), size=256)
        assert a.shape == (256, 256, 3) and b.shape == (256, 256)
        assert (b != 0).any()
        # object pixels are bright, background pixels dark (up to interpolation at edges)
        inside = a[b != 0].mean()
        outside = a[b == 0].mean()
        assert inside > 150 and outside < 40


def test_prompt_kinds_and_noisy_mask():
    from pasam_plugins.train.trainer import (
        PROMPT_KINDS,
        ObjectPrompts,
        PreparedImage,
        build_prompts,
        noisy_mask,
    )

    low = torch.zeros(256, 256, dtype=torch.int32)
    low[40:120, 60:200] = 1
    low[150:220, 20:90] = 2
    objs = [
        ObjectPrompts(
            1, np.array([240, 160, 800, 480], np.float32), np.full((5, 2), 300, np.float32)
        ),
        ObjectPrompts(
            2, np.array([80, 600, 360, 880], np.float32), np.full((50, 2), 200, np.float32)
        ),
    ]
    prep = PreparedImage(
        "x", torch.zeros(1, 256, 64, 64), torch.zeros(1, 4, 256, 256), low, low, objs
    )
    rng = np.random.default_rng(0)
    for kind in PROMPT_KINDS:
        kw = build_prompts(prep, [0, 1], kind, rng, num_points=10)
        assert (kw["boxes"] is not None) == ("box" in kind)
        assert (kw["points"] is not None) == ("points" in kind)
        assert (kw["mask_input"] is not None) == ("mask" in kind)
        if kw["boxes"] is not None:
            assert kw["boxes"].shape == (2, 4) and kw["boxes"][1, 1] == 600
        if kw["points"] is not None:
            coords, labels = kw["points"]
            # 10 points each, drawn from the object's pool (with replacement when it is smaller)
            assert coords.shape == (2, 10, 2) and (coords[0] == 300).all() and (labels == 1).all()
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_prompts(prep, [0], "box+scribble", rng)

    gt = (low == 1).float()[None, None]
    noisy = noisy_mask(gt, np.random.default_rng(1))
    assert set(noisy.unique().tolist()) <= {0.0, 255.0}
    changed = (noisy / 255 != gt)[0, 0]
    assert changed.any()  # noise flips some pixels ...
    assert not changed[60:100, 90:170].any() and not changed[:20].any()  # ... only near the edge
