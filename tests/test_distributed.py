"""Past one process: ``pasam train`` under torchrun (DDP on Gloo with 2 CPU ranks) trains
the same weights as one process with the same global batch, resumes with another number of
ranks, stops cleanly on SIGTERM or when a rank fails; ``pasam embed``, ``pasam eval`` and
``pasam segment-all`` split their images across ranks and give the results of one process.

Every test here starts real ranks (``python -m torch.distributed.run --standalone
--nproc_per_node=2``); NCCL (CUDA) is the same code with another backend and is not run
here (no GPU on the test machine)."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from dist_support import DRIVER, ROOT, pasam_ranks, rank_env, run, session_processes, torchrun
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from pasam_plugins import distributed
from pasam_plugins.checkpoint import read_metadata
from pasam_plugins.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture()
def folder(tmp_path):
    """4 images with 2 objects each (components: data), and 3 of them alone (images/)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        img = (rng.random((64, 80)) * 50).astype(np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        mask[10 + i : 30, 12 : 40 + i] = 255
        mask[40:55, 50:70] = 255
        img[mask > 0] = 200
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def _cli(*args):
    """One process, with one torch thread as each rank has (torchrun's OMP_NUM_THREADS=1):
    the fused-attention encoder's float32 sums then run in the same order in both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)


def _train_args(folder, ckpt, out, *, accum: int, steps: int, resume: bool = False):
    args = [
        "train",
        f"components:{folder}",
        "-c",
        ckpt,
        "--out-dir",
        out,
        "--batch-size",
        "1",
        "--grad-accum",
        str(accum),
        "--max-steps",
        str(steps),
        "--save-every",
        "1",
        "--no-jitter",
        "--loss-size",
        "256",
        "--no-amp",
        "--device",
        "cpu",
    ]
    return args + (["--resume"] if resume else [])


def _assert_same_weights(a, b, atol=1e-6):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-5, msg=k)


def test_helpers_in_a_single_process():
    assert not distributed.active() and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.shard(list(range(5)), 1, 2) == [1, 3]
    assert distributed.gather("x") == ["x"] and distributed.all_gather(3) == [3]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    with distributed.session("cpu") as dev:
        assert dev == torch.device("cpu") and not distributed.active()


def test_two_ranks_train_like_one_process_and_resume_across_rank_counts(
    folder, tmp_path, tiny_checkpoint
):
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, 2 micro-batches of 1 per step (global batch 2), 2 steps
    res = _cli(*_train_args(folder, tiny_checkpoint, one, accum=2, steps=2))
    assert res.exit_code == 0, res.output
    # two ranks (Gloo), 1 micro-batch of 1 each (global batch 2), stopped after step 1
    proc = run(pasam_ranks(*_train_args(folder, tiny_checkpoint, two, accum=1, steps=1)))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("2 ranks (gloo), global batch 2 = 1 x 2 x 1") == 1  # rank 0 only
    _assert_same_weights(two / "adapter.safetensors", one / "adapter-step000001.safetensors")
    log_one = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_two] == [1]  # one writer
    assert log_two[0]["images"] == 2 == log_one[0]["images"]  # the loss of all ranks' images
    assert log_two[0]["total"] == pytest.approx(log_one[0]["total"], rel=1e-5)
    prov = read_metadata(two / "adapter.safetensors")["provenance"]
    assert prov["ranks"] == 2 and prov["global_batch"] == 2
    assert not list(two.glob(".*tmp"))

    # resume on one process: the global batch must stay 2 ...
    res = _cli(*_train_args(folder, tiny_checkpoint, two, accum=1, steps=2, resume=True))
    assert res.exit_code == 1 and "global batch of 2" in res.output
    # ... with grad-accum 2 it continues exactly where the two ranks stopped
    res = _cli(*_train_args(folder, tiny_checkpoint, two, accum=2, steps=2, resume=True))
    assert res.exit_code == 0, res.output
    assert "resuming at step 1" in res.output
    _assert_same_weights(two / "adapter.safetensors", one / "adapter.safetensors")

    # and the other way: one process stops after step 1, two ranks (DDP) finish the run
    three = tmp_path / "three"
    res = _cli(*_train_args(folder, tiny_checkpoint, three, accum=2, steps=1))
    assert res.exit_code == 0, res.output
    (three / "adapter.safetensors").unlink()  # (the finished run of 1 step)
    proc = run(pasam_ranks(*_train_args(folder, tiny_checkpoint, three, accum=1, steps=2,
                                        resume=True)))  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("resuming at step 1 of 2") == 1  # rank 0 only
    _assert_same_weights(three / "adapter.safetensors", one / "adapter.safetensors")
    log_three = [json.loads(x) for x in (three / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_three] == [1, 2]
    assert log_three[1]["total"] == pytest.approx(log_one[1]["total"], rel=1e-5)


@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "Ctrl-C in the terminal"])
def test_a_stop_signal_stops_every_rank_at_one_step_and_rank0_saves(
    folder, tmp_path, tiny_checkpoint, how
):
    out = tmp_path / "run"
    args = _train_args(folder, tiny_checkpoint, out, accum=1, steps=500)
    args[args.index("--save-every") + 1] = "0"
    # a scheduler's SIGTERM goes to torchrun, which passes it to every rank and waits up to
    # --shutdown-timeout for them before SIGKILL; Ctrl-C sends SIGINT to the whole
    # foreground process group: torchrun and every rank at once (and torchrun passes it on)
    proc = subprocess.Popen(
        pasam_ranks(*args, options=("--shutdown-timeout=600",)),
        env=rank_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log = out / "log.jsonl"
        deadline = time.monotonic() + 900
        while not (log.is_file() and log.read_text().strip()):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no training step in time"
            time.sleep(0.5)
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "stopped at step" in output and "continue with --resume" in output, output
    state = torch.load(out / "train_state.pt", weights_only=True)
    step = state["step"]
    assert 1 <= step < 500 and state["world_size"] == 2
    assert (out / f"adapter-step{step:06d}.safetensors").is_file()
    assert not (out / "adapter.safetensors").exists()  # not a finished run
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, step + 1))
    assert session_processes(proc.pid) == []  # no rank left behind


def test_a_failing_rank_ends_the_others(tmp_path):
    out = tmp_path / "fail"
    t0 = time.time()
    # a long collective timeout: the other rank must end because its peer left, not by timeout
    proc = run(
        torchrun(DRIVER, "fail", out),
        env=rank_env(PASAM_DIST_TIMEOUT="3600"),
        timeout=1500,
    )
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stdout
    failed_at = float((out / "failed-at").read_text())
    assert failed_at > t0
    assert time.time() - failed_at < 240, proc.stdout


def test_batch_work_split_across_ranks_equals_one_process(folder, tmp_path, tiny_checkpoint):
    images = tmp_path / "three"
    images.mkdir()
    for i in range(3):  # 3 images on 2 ranks: rank 0 takes two, rank 1 one
        (images / f"{i}.png").write_bytes((folder / "images" / f"{i}.png").read_bytes())

    def commands(out):
        return [
            ["embed", images, "-c", tiny_checkpoint, "--cache-dir", out / "emb", "--device", "cpu"],
            ["eval", f"components:{folder}", "-c", tiny_checkpoint, "--csv", out / "eval.csv"]
            + ["--max-objects", "2", "--clicks", "2", "--device", "cpu"],
            ["segment-all", images, "-c", tiny_checkpoint, "--out-dir", out / "seg"]
            + ["--points-per-side", "4", "--no-progress", "--device", "cpu"],
        ]

    one, two = tmp_path / "one", tmp_path / "two"
    for args in commands(one):
        res = _cli(*args)
        assert res.exit_code == 0, res.output
    argv: list[object] = []
    for args in commands(two):
        argv += [*args, "--next--"]
    proc = run(torchrun(DRIVER, "cli", *argv[:-1]))
    assert proc.returncode == 0, proc.stdout
    assert "by 2 ranks" in proc.stdout and "2 ranks evaluated 4 images" in proc.stdout

    # embed: the same entries in the shared store
    names = sorted(p.name for p in (one / "emb").glob("*.safetensors"))
    assert names and names == sorted(p.name for p in (two / "emb").glob("*.safetensors"))
    for n in names:
        a, b = load_file(one / "emb" / n), load_file(two / "emb" / n)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # eval: rank 0 merged the rows into the tables one process writes
    for name in ("eval.csv", "eval-images.csv", "eval-clicks.csv"):
        assert (two / name).read_text() == (one / name).read_text(), name
    ja, jb = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    ja.pop("seconds"), jb.pop("seconds")
    assert ja == jb
    # segment-all: every image's files, and coco.json / summary.json of all images
    for i in range(3):
        for suffix in ("_labels.tif", "_objects.csv", "_overlay.png"):
            assert (two / "seg" / f"{i}{suffix}").is_file()
        a = (one / "seg" / f"{i}_objects.csv").read_text()
        assert (two / "seg" / f"{i}_objects.csv").read_text() == a
    assert (two / "seg" / "coco.json").read_text() == (one / "seg" / "coco.json").read_text()
    sa, sb = (json.loads((d / "seg" / "summary.json").read_text()) for d in (one, two))
    for entries in (sa, sb):
        for e in entries:
            e.pop("seconds")
            e["outputs"] = [os.path.basename(p) for p in e["outputs"]]
    assert sa == sb
