"""``pasam train`` and ``pasam eval`` (registered lazily by :mod:`pasam_plugins.cli`).

Data sources are given as ``[kind:]path``: ``folder:`` (images + masks, the default for
folders), ``components:`` (a folder whose masks' connected components are the objects, e.g.
``components:../shared/data/isbi2012-em``), ``napari:`` (Labels TIFFs next to images),
``hqseg:`` (the HQSeg-44K data folder of SAM-HQ; train split for training, validation
split for evaluation) and ``labelstudio:`` (a JSON export; the default for ``.json``).
"""

from pathlib import Path
from typing import Annotated

import typer

from ..cli import _err, _readable_errors

DATA_HELP = (
    "Data as KIND:PATH or PATH; KIND is folder (default for folders), components, napari, "
    "hqseg or labelstudio (default for .json files). Several may be given."
)


def _load_datasets(specs: list[str], *, split: str, image_root: Path | None, quiet: bool = False):
    from .datasets import read_source

    out = []
    for spec in specs:
        for ds in read_source(
            spec, split=split, image_root=str(image_root) if image_root else None
        ):  # type: ignore[arg-type]
            if ds.skipped and not quiet:
                typer.echo(f"{ds.name}: skipped {len(ds.skipped)} file(s):", err=True)
                for what, why in ds.skipped[:20]:
                    typer.echo(f"  {what}: {why}", err=True)
                if len(ds.skipped) > 20:
                    typer.echo(f"  ... and {len(ds.skipped) - 20} more", err=True)
            out.append(ds)
    return out


def _load_model(checkpoint: Path, sam_checkpoint: Path | None, device: str | None):
    from ..checkpoint import load_model
    from ..predictor import select_device

    try:
        dev = select_device(device)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    return load_model(checkpoint, device=dev, sam_checkpoint=sam_checkpoint), dev


def train_command(
    data: Annotated[list[str], typer.Argument(help=DATA_HELP, show_default=False, metavar="DATA")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Starting weights: a SAM checkpoint (a new adapter is initialized) or a "
            "PA-SAM one (its adapter is trained further). Omit with --train sam --variant V "
            "to train a SAM from scratch.",
            envvar="PASAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    train: Annotated[
        str,
        typer.Option(
            help="What to train: adapter (PA-SAM's set: the adapter and SAM's mask head; "
            "SAM frozen), sam (the whole SAM, no adapter: stage-1 training from scratch or "
            "further training), head (SAM's mask head alone, no adapter: the control run), "
            "hq (HQ-SAM's HQ output token, MLP and fusion layers on a frozen SAM), plm (a "
            "prompt learning module on the frozen model) and pmm (the point matching "
            "module's auxiliary loss, with plm/adapter/hq/head). Combine with commas: "
            "adapter,plm or plm,pmm."
        ),
    ] = "adapter",
    variant: Annotated[
        str | None,
        typer.Option(
            help="With --train sam and no checkpoint: the variant to build (e.g. vit_s256)."
        ),
    ] = None,
    crops: Annotated[
        bool,
        typer.Option(
            help="Zoomed-in examples: one object per crop around it, resized to the model "
            "input, with microscopy augmentation; the saved model is used zoomed in."
        ),
    ] = False,
    corrective_clicks: Annotated[
        int, typer.Option(min=0, help="With --crops: corrective-click rounds per example.")
    ] = 0,
    epoch_steps: Annotated[
        int | None, typer.Option(min=1, help="Steps per epoch (default: one pass over the images).")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="adam (the paper) or adamw.")] = "adam",
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    schedule: Annotated[
        str, typer.Option(help="step (x --lr-gamma every --lr-drop-epoch epochs) or cosine.")
    ] = "step",
    warmup_steps: Annotated[int, typer.Option(min=0)] = 0,
    grad_clip: Annotated[
        float, typer.Option(min=0.0, help="Clip the gradient norm (0: off).")
    ] = 0.0,
    sam_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Base SAM weights for decoder-only files.",
            envvar="PASAM_SAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    val: Annotated[
        list[str] | None,
        typer.Option(
            help="Validation data (same syntax; default for hqseg: its validation split)."
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Output folder.", file_okay=False)] = Path(
        "pasam-train"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 21,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-3,
    lr_drop_epoch: Annotated[
        int, typer.Option(min=1, help="Multiply the lr by --lr-gamma every this many epochs.")
    ] = 10,
    lr_gamma: Annotated[float, typer.Option(min=0.0)] = 0.1,
    mining_start_epoch: Annotated[
        int, typer.Option(min=0, help="First epoch (0-based) with Gumbel top-k point mining.")
    ] = 5,
    prompts: Annotated[
        str,
        typer.Option(
            help="Comma-separated prompt kinds drawn per image: box, points, mask, "
            "or combinations like box+points."
        ),
    ] = "box,points,mask,box+points,box+mask,points+mask,box+points+mask",
    num_points: Annotated[int, typer.Option(min=1, help="Points per point prompt.")] = 10,
    objects_per_image: Annotated[int, typer.Option(min=1)] = 1,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    jitter: Annotated[
        bool,
        typer.Option(
            help="Large-scale jitter (0.1-2.0). --no-jitter caches encoder outputs "
            "per image (much faster for small data sets)."
        ),
    ] = True,
    loss_size: Annotated[
        int, typer.Option(min=64, max=1024, help="Loss resolution in the 1024-px frame.")
    ] = 1024,
    seed: Annotated[int, typer.Option()] = 0,
    amp: Annotated[
        bool,
        typer.Option(
            help="Mixed precision: bf16/fp16 on CUDA, bf16 on CPUs with AMX or AVX512-BF16."
        ),
    ] = True,
    save_every: Annotated[
        int, typer.Option(min=0, help="Checkpoint every N steps (0: end only).")
    ] = 500,
    val_every: Annotated[
        int, typer.Option(min=0, help="Validate every N steps (0: every epoch).")
    ] = 0,
    val_max_objects: Annotated[int, typer.Option(min=1, help="Objects per validation image.")] = 20,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many steps.")
    ] = None,
    full_checkpoint: Annotated[
        bool,
        typer.Option(
            help="Save whole models instead of adapter-only files (which need "
            "--sam-checkpoint to load)."
        ),
    ] = False,
    guide_mode: Annotated[
        str, typer.Option(help="Guide mode of a NEW adapter: image or reference.")
    ] = "image",
    image_root: Annotated[
        Path | None, typer.Option(help="Label Studio media folder (for labelstudio: data).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT_DIR/train_state.pt (same settings).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, mps (default: best).")] = None,
) -> None:
    """Train the PA-SAM adapter (SAM stays frozen) with the paper's protocol.

    Writes to OUT_DIR: adapter-stepNNNNNN.safetensors every --save-every steps,
    adapter.safetensors at the end, train_state.pt (for --resume), log.jsonl and curves.png.

    Several GPUs: torchrun --nproc_per_node=N --no-python pasam train ... (DDP; the global batch is --batch-size x N x --grad-accum; rank 0 writes the outputs; --resume works with another N when the global batch stays the same). See docs/scaling.md.
    """
    kinds = tuple(k.strip() for k in prompts.split(",") if k.strip())
    bad = [k for k in kinds if not set(k.split("+")) <= {"box", "points", "mask"}]
    if not kinds or bad:
        raise typer.BadParameter(
            f"unknown prompt kind(s) {bad or prompts!r}", param_hint="--prompts"
        )
    if guide_mode not in ("image", "reference"):
        raise typer.BadParameter("use image or reference", param_hint="--guide-mode")
    from .trainer import parse_parts

    try:
        parts = parse_parts(train)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--train") from None
    if optimizer not in ("adam", "adamw"):
        raise typer.BadParameter("use adam or adamw", param_hint="--optimizer")
    if schedule not in ("step", "cosine"):
        raise typer.BadParameter("use step or cosine", param_hint="--schedule")
    if checkpoint is None and not (parts == ("sam",) and variant):
        raise typer.BadParameter(
            "give the starting weights (or --train sam --variant V for a new SAM)",
            param_hint="--checkpoint",
        )
    if checkpoint is not None and not checkpoint.is_file():
        _err(f"{checkpoint}: no such checkpoint file")
        raise typer.Exit(2)
    if variant is not None:
        from ..modeling import ENCODER_CONFIGS

        if variant not in ENCODER_CONFIGS:
            raise typer.BadParameter(
                f"unknown variant; known: {', '.join(ENCODER_CONFIGS)}", param_hint="--variant"
            )
    from .. import distributed

    # under torchrun: one process per device, joined in a process group for the whole run
    # (left again on every way out, so that a failing rank never leaves the others waiting)
    with _readable_errors(), distributed.session(device) as rank_device:
        from .trainer import STATE_NAME, TrainConfig, Trainer, prepare_for_training

        main = distributed.is_main()  # rank 0 reports; the others train silently
        say = typer.echo if main else _silent
        device = str(rank_device)
        train_sets = _load_datasets(data, split="train", image_root=image_root, quiet=not main)
        if val:
            val_sets = _load_datasets(val, split="val", image_root=image_root, quiet=not main)
        else:
            hq = [s for s in data if s.startswith("hqseg:")]
            val_sets = (
                _load_datasets(hq, split="val", image_root=image_root, quiet=not main) if hq else []
            )
        samples = [s for ds in train_sets for s in ds.samples]
        if not samples:
            _err("no usable training samples (see the skipped files above)")
            raise typer.Exit(1)
        if checkpoint is None:
            import torch

            from ..modeling import build_pasam
            from ..predictor import select_device

            torch.manual_seed(seed)
            model = build_pasam(variant, adapter=False, guide_mode=guide_mode)  # type: ignore[arg-type]
            dev = select_device(device)
            meta: dict = {}
        else:
            model, dev = _load_model(checkpoint, sam_checkpoint, device)
            meta = model.origin.metadata
        if model.origin.untrained:
            say(
                f"WARNING: {checkpoint} has UNTRAINED RANDOM WEIGHTS (pasam "
                "make-test-checkpoint): training on it shows the pipeline, not a useful model.",
                err=True,
            )
        if model.has_adapter and any(p in parts for p in ("sam", "head", "hq")):
            raise typer.BadParameter(
                f"--train {train} trains a SAM without adapter, but the checkpoint has one",
                param_hint="--train",
            )
        try:
            model = prepare_for_training(model, train, guide_mode=guide_mode, seed=seed)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--train") from None
        cfg = TrainConfig(
            out_dir=str(out_dir),
            epochs=epochs,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            lr_drop_epoch=lr_drop_epoch,
            lr_gamma=lr_gamma,
            mining_start_epoch=mining_start_epoch,
            prompt_kinds=kinds,
            num_points=num_points,
            objects_per_image=objects_per_image,
            flip=flip,
            jitter=(0.1, 2.0) if jitter else None,
            loss_size=loss_size,
            seed=seed,
            amp=amp,
            save_every=save_every,
            val_every=val_every,
            val_max_objects=val_max_objects,
            max_steps=max_steps,
            adapter_only=not full_checkpoint,
            device=str(dev),
            train=",".join(parts),
            crops=crops,
            corrective_clicks=corrective_clicks,
            epoch_steps=epoch_steps,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_steps=warmup_steps,
            grad_clip=grad_clip,
        )
        # an adapter file loads on a complete model: the SAM base when one was given
        # (decoder-only / adapter inputs need it), else the starting checkpoint itself
        base_file = sam_checkpoint or meta.get("base_checkpoint") or checkpoint
        provenance = {
            "base_checkpoint": str(Path(base_file).resolve()) if base_file else None,
            "start_checkpoint": str(checkpoint) if checkpoint else f"new {variant} (seed {seed})",
            "sam_checkpoint": str(sam_checkpoint) if sam_checkpoint else None,
            "data": list(data),
            "validation": list(val or []),
            "untrained_base": bool(checkpoint is not None and model.origin.untrained),
        }
        trainer = Trainer(
            model, samples, config=cfg, val=val_sets, provenance=provenance, progress=main
        )
        if resume:
            trainer.resume(out_dir / STATE_NAME)
            say(f"resuming at step {trainer.step} of {trainer.total_steps}", err=True)
        ranks = ""
        if trainer.world > 1:
            ranks = (
                f", {trainer.world} ranks ({distributed.backend_for(trainer.device)}), global "
                f"batch {trainer.global_batch} = {batch_size} x {trainer.world} x {grad_accum}"
            )
        say(
            f"training {len(trainer.params)} tensors "
            f"({sum(p.numel() for p in trainer.params):,} weights) on {len(samples)} images, "
            f"{trainer.total_steps} steps, device {dev}{ranks}",
            err=True,
        )
        if trainer.world > 1:
            result = _run_distributed(trainer)
        else:
            result = _run_single(trainer)
        if not main:
            return
        if trainer.skipped:
            typer.echo(
                f"{len(trainer.skipped)} sample(s) failed to load and were skipped:", err=True
            )
            for name, why in list(trainer.skipped.items())[:20]:
                typer.echo(f"  {name}: {why}", err=True)
        last = next((h for h in reversed(result.history) if "total" in h), {})
        typer.echo(f"step {result.step}: loss {last.get('total', float('nan')):.4f}")
        typer.echo(f"checkpoint: {result.checkpoint}")
        typer.echo(f"log: {out_dir / 'log.jsonl'}  curves: {out_dir / 'curves.png'}")


def _silent(*args, **kwargs) -> None:
    """``typer.echo`` on the ranks other than 0."""


def _run_single(trainer):
    """One process: Ctrl-C and SIGTERM (kill, schedulers) stop at once and save."""
    import signal

    def _terminate(signum, frame):  # SIGTERM: stop like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return trainer.run()
    except KeyboardInterrupt:
        path = trainer.save()
        _err(f"interrupted at step {trainer.step}; saved {path}; continue with --resume")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_distributed(trainer):
    """Under torchrun: Ctrl-C / SIGTERM on any rank stops every rank after the current
    step (they agree on the step), rank 0 saves, every rank exits with status 130. A second
    signal a few seconds later stops at once (rank 0 still saves the last complete step).
    An error on one rank ends it; the process group is left, so the others fail in their
    next collective instead of waiting (and torchrun stops them)."""
    from .. import distributed

    main = distributed.is_main()
    with distributed.StopRequest() as stop:
        try:
            result = trainer.run(should_stop=stop)
        except KeyboardInterrupt:
            path = trainer.save()
            if main:
                _err(f"interrupted at step {trainer.step}; saved {path}; continue with --resume")
            raise typer.Exit(130) from None
    if trainer.stopped:
        if main:
            _err(
                f"stopped at step {trainer.step} on request; saved {result.checkpoint}; "
                "continue with --resume"
            )
        raise typer.Exit(130)
    return result


def eval_command(
    data: Annotated[
        list[str] | None,
        typer.Argument(help=DATA_HELP, show_default=False, metavar="DATA"),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Weights to evaluate.",
            envvar="PASAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    sam_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Base SAM weights for decoder-only files.",
            envvar="PASAM_SAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    points: Annotated[
        int, typer.Option(min=0, help="Positive points per object, drawn inside its mask.")
    ] = 0,
    box: Annotated[bool, typer.Option(help="Prompt with the ground-truth box.")] = True,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Weights for the SAM row, e.g. the original SAM checkpoint. Default: the base "
            "SAM of an adapter file (--sam-checkpoint), else the same weights with the adapter off.",
            dir_okay=False,
        ),
    ] = None,
    sam: Annotated[
        bool, typer.Option(help="Also evaluate SAM (same weights, adapter off) side by side.")
    ] = True,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="Another model evaluated in the same run on the same objects with the same "
            "prompts (repeatable): FILE or NAME=FILE. Its row is named after the model "
            "(PA-SAM, HQ-SAM, SAM + PLM ...) unless NAME is given; e.g. -c pasam.safetensors "
            "--compare hq.safetensors --baseline sam.safetensors gives SAM / PA-SAM / HQ-SAM.",
        ),
    ] = None,
    max_objects: Annotated[
        int | None, typer.Option(min=1, help="At most this many objects per image.")
    ] = None,
    min_pixels: Annotated[int, typer.Option(min=1, help="Ignore smaller objects.")] = 1,
    split: Annotated[str, typer.Option(help="hqseg split: val or train.")] = "val",
    csv: Annotated[Path, typer.Option(help="Per-object results (CSV).", dir_okay=False)] = Path(
        "pasam-eval.csv"
    ),
    image_root: Annotated[
        Path | None, typer.Option(help="Label Studio media folder (for labelstudio: data).")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, mps (default: best).")] = None,
    clicks: Annotated[
        int,
        typer.Option(
            min=0,
            help="Simulate annotators with up to N clicks per object: NoC@85/90, NoF@90, "
            "mIoU after k clicks (0: off; the usual N is 20).",
        ),
    ] = 0,
    strategies: Annotated[
        str,
        typer.Option(
            help="Annotators for --clicks: oracle (next click in the largest error region), "
            "suggested (the strongest mined point, labelled by the ground truth), band (a "
            "random point of the mask's contour band). SAM rows run the oracle only."
        ),
    ] = "oracle,suggested,band",
    uncertainty: Annotated[
        bool,
        typer.Option(
            help="Uncertainty AUROC for wrong pixels, predicted-IoU calibration and task "
            "score ranking."
        ),
    ] = True,
    session_log: Annotated[
        list[Path] | None,
        typer.Option(
            help="Summarize an annotation session log (JSONL; repeatable). Alone, without "
            "DATA and --checkpoint, only the logs are summarized.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Evaluate mIoU and boundary mIoU per dataset, PA-SAM next to SAM (Table 1 layout),
    and what PA-SAM's uncertainty, mined points and task score are worth to an annotator.

    Objects are prompted with their ground-truth box (and/or --points N points inside them);
    predictions are thresholded at 0, ground truth at 128. Besides the CSV: X-images.csv
    (per-image task score, AUROCs), X-reliability.png, X.json (every aggregate) and, with
    --clicks, X-clicks.csv and X-clicks.png (mIoU after k clicks).
    """
    if session_log:
        from ..session import SessionLogError, summarize_sessions

        try:
            summary = summarize_sessions(session_log)
        except SessionLogError as e:
            _err(str(e))
            raise typer.Exit(2) from None
        typer.echo(summary.table())
        if not data:
            return
    if not data:
        raise typer.BadParameter("give the data to evaluate (or --session-log)", param_hint="DATA")
    if checkpoint is None:
        raise typer.BadParameter("give the weights to evaluate", param_hint="--checkpoint")
    from ..interactive import STRATEGIES

    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    bad = [s for s in chosen if s not in STRATEGIES]
    if bad or not chosen:
        raise typer.BadParameter(
            f"unknown annotator(s) {bad or strategies!r}; use some of {', '.join(STRATEGIES)}",
            param_hint="--strategies",
        )
    if split not in ("val", "train"):
        raise typer.BadParameter("use val or train", param_hint="--split")
    if not box and points == 0:
        raise typer.BadParameter(
            "give a prompt: keep --box or set --points N", param_hint="--points"
        )
    if not checkpoint.is_file():
        _err(f"{checkpoint}: no such checkpoint file")
        raise typer.Exit(2)
    from .. import distributed

    # under torchrun: every rank evaluates its share of the images on its own device and
    # rank 0 merges the rows (in the order of a single process) and writes the outputs
    with _readable_errors(), distributed.session(device) as rank_device:
        from ..evaluate import evaluate_model, merge_reports

        main = distributed.is_main()
        say = typer.echo if main else _silent
        datasets = _load_datasets(data, split=split, image_root=image_root, quiet=not main)
        if not any(ds.samples for ds in datasets):
            _err("no usable samples to evaluate (see the skipped files above)")
            raise typer.Exit(1)
        model, dev = _load_model(checkpoint, sam_checkpoint, str(rank_device))
        meta = model.origin.metadata
        base_model = None
        if baseline is None and meta.get("contents") == "adapter" and sam_checkpoint:
            baseline = sam_checkpoint
        others = []
        for spec in compare or []:
            name, sep, file = spec.partition("=")
            path = Path(file if sep else spec)
            if not path.is_file():
                _err(f"--compare {spec}: {path}: no such checkpoint file")
                raise typer.Exit(2)
            other, _ = _load_model(path, sam_checkpoint, str(dev))
            others.append((name if sep else other.method_name, other))
        if sam and model.has_additions:
            if baseline is not None:
                base_model, _ = _load_model(baseline, sam_checkpoint, str(dev))
                say(f"SAM row: {baseline} (adapter off)", err=True)
            else:
                say(
                    "SAM row: the same weights with the adapter off (its output_upscaling, "
                    "hypernetwork MLPs and mask tokens are the trained ones; pass --baseline "
                    "with the original SAM to compare with SAM exactly)",
                    err=True,
                )
        report = evaluate_model(
            model,
            datasets,
            baseline=base_model,
            num_points=points,
            use_box=box,
            compare_sam=sam,
            others=others,
            max_objects=max_objects,
            min_pixels=min_pixels,
            seed=seed,
            device=dev,
            progress=main,
            clicks=clicks,
            strategies=chosen,
            uncertainty=uncertainty,
            shard=(distributed.rank(), distributed.world_size()) if distributed.active() else None,
        )
        parts = distributed.gather(report)
        if parts is None:  # not rank 0: its rows went to rank 0
            return
        if len(parts) > 1:
            report = merge_reports(parts)
            say(f"{len(parts)} ranks evaluated {len(report.spans)} images", err=True)
        for name, why in report.skipped:
            typer.echo(f"skipped {name}: {why}", err=True)
        if not report.results:
            _err("no object was evaluated")
            raise typer.Exit(1)
        if model.origin.untrained:
            typer.echo(
                "WARNING: the checkpoint has UNTRAINED RANDOM WEIGHTS; the numbers are "
                "meaningless.",
                err=True,
            )
        typer.echo(report.table())
        if clicks:
            typer.echo("\n" + report.click_table())
        if uncertainty:
            typer.echo("\n" + report.uncertainty_table())
        targets = report.targets()
        if targets:
            typer.echo("\ntargets (issue 13, for the shipped model):")
            for line in targets:
                typer.echo(f"  {line}")
        paths = report.write_outputs(csv)
        typer.echo(f"\nper-object results: {paths[0]} ({report.seconds:.1f} s)")
        typer.echo("also written: " + ", ".join(str(p) for p in paths[1:]))
