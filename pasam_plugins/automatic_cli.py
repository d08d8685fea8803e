"""``pasam segment-all`` (every object of images, no clicks) and ``pasam convert`` (a Label
Studio JSON export to COCO and label images). Registered as lazy commands in
:mod:`pasam_plugins.cli`."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli import (
    UNTRAINED_WARNING,
    _default_checkpoint,
    _err,
    _parse_precision,
    _readable_errors,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _images_of(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise typer.BadParameter(
                f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder",
                param_hint="SOURCE",
            )
        return files
    raise typer.BadParameter(f"{source}: no such image file or folder", param_hint="SOURCE")


def _silent(*args, **kwargs) -> None:
    """``typer.echo`` on the ranks other than 0."""


def segment_all_command(
    source: Annotated[
        Path, typer.Argument(help="An image file, or a folder of images.", show_default=False)
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="PA-SAM or SAM weights (default: the shipped model pasam_micro).",
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
    out_dir: Annotated[Path, typer.Option(help="Output folder.", file_okay=False)] = Path(
        "pasam-segment-all"
    ),
    points_per_side: Annotated[
        int, typer.Option(min=1, help="Grid points per side of each window.")
    ] = 32,
    points_per_batch: Annotated[int, typer.Option(min=1, help="Prompts per decoder call.")] = 64,
    pred_iou_thresh: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep masks with predicted IoU above this (default: the model's: 0.88 for "
            "whole-image models, AutomaticSettings.for_zoom for zoomed ones).",
        ),
    ] = None,
    stability_thresh: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep masks with stability at least this (default: the model's: 0.95 for "
            "whole-image models, AutomaticSettings.for_zoom for zoomed ones).",
        ),
    ] = None,
    box_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Zoomed models (box proposals): keep masks whose bounding box has at least "
            "this IoU with the proposal box (default: AutomaticSettings.for_zoom).",
        ),
    ] = None,
    max_uncertainty: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep masks whose boundary uncertainty is at most this (needs the adapter; "
            "default: no uncertainty filter).",
        ),
    ] = None,
    nms: Annotated[
        str, typer.Option(help="Duplicate removal: mask (IoU of masks) or box.")
    ] = "mask",
    nms_thresh: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="NMS threshold (default: the model's: 0.7 for whole-image models, "
            "AutomaticSettings.for_zoom for zoomed ones).",
        ),
    ] = None,
    crop_layers: Annotated[
        int, typer.Option(min=0, help="SAM's crop layers (whole-image models).")
    ] = 0,
    tile_size: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Tiles of this side (pixels); default: the model input for zoomed models.",
        ),
    ] = None,
    min_region_area: Annotated[
        int, typer.Option(min=0, help="Fill holes and remove islands smaller than this (px).")
    ] = 0,
    min_object_area: Annotated[
        int, typer.Option(min=1, help="Drop objects with fewer visible pixels in the label image.")
    ] = 1,
    adapter: Annotated[bool, typer.Option(help="Use the PA-SAM adapter (off: plain SAM).")] = True,
    channel: Annotated[int | None, typer.Option(help="Channel of a multichannel image.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best).")] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="Image encoder number format: auto (bf16 where this CPU or GPU computes it "
            "fast, else float32), float32 or bf16.",
            envvar="PASAM_PRECISION",
        ),
    ] = "auto",
    coco_mode: Annotated[
        str, typer.Option(help="Segmentations in coco.json: rle or polygon.")
    ] = "rle",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Deprecated, ignored (the default model is shipped).", hidden=True),
    ] = None,
) -> None:
    """Segment every object of IMAGE (or of every image in FOLDER) without prompts.

    For each image STEM it writes to --out-dir: STEM_labels.tif (uint16/uint32 label image), STEM_objects.csv (one row per object: area, box, centroid, predicted IoU, stability, mean and boundary uncertainty, review rank) and STEM_overlay.png (objects in colour, the most uncertain outlined in red); plus coco.json with all images.

    Under torchrun (torchrun --nproc_per_node=N --no-python pasam segment-all FOLDER ...) every rank segments its share of the images on its own GPU; rank 0 writes coco.json and summary.json for all of them, as one process would.
    """
    if nms not in ("mask", "box"):
        raise typer.BadParameter(f"{nms!r} is not mask or box", param_hint="--nms")
    if coco_mode not in ("rle", "polygon"):
        raise typer.BadParameter(f"{coco_mode!r} is not rle or polygon", param_hint="--coco-mode")
    if checkpoint is not None and not checkpoint.is_file():
        _err(f"{checkpoint}: no such checkpoint file")
        raise typer.Exit(2)
    precision = _parse_precision(precision)
    files = _images_of(source)
    from . import distributed

    with _readable_errors(), distributed.session(device) as rank_device:
        from tqdm import tqdm

        from .automatic import AutomaticSegmenter, default_settings, result_objects
        from .checkpoint import load_model
        from .export import (
            ImageObjects,
            coco_dataset,
            object_rows,
            write_csv,
            write_json,
            write_label_tiff,
        )
        from .imageio import normalize_image, read_image
        from .predictor import PASamPredictor, select_device
        from .viz import instances_overlay, save_png

        main = distributed.is_main()
        say = typer.echo if main else _silent
        try:
            dev = select_device(rank_device)
        except (ValueError, RuntimeError) as e:
            raise typer.BadParameter(str(e), param_hint="--device") from None
        try:
            from .precision import resolve_precision

            resolve_precision(precision, dev)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--precision") from None
        if checkpoint is None:
            checkpoint = _default_checkpoint(announce=main)
        model = load_model(checkpoint, sam_checkpoint=sam_checkpoint)
        untrained = model.origin.untrained
        if untrained:
            say(UNTRAINED_WARNING, err=True)
        if max_uncertainty is not None and not (adapter and model.has_adapter):
            raise typer.BadParameter(
                "the uncertainty filter needs the PA-SAM adapter: this model has none"
                if not model.has_adapter
                else "--max-uncertainty needs the adapter (drop --no-adapter)",
                param_hint="--max-uncertainty",
            )
        # zoomed models get their own defaults (box proposals, thresholds chosen on
        # validation data); options left unset (None) keep the model's default
        settings = default_settings(
            model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh,
            min_box_agreement=box_agreement,
            max_boundary_uncertainty=max_uncertainty,
            nms=nms,  # type: ignore[arg-type]
            box_nms_thresh=nms_thresh,
            crop_n_layers=crop_layers,
            tile_size=tile_size,
            min_mask_region_area=min_region_area,
            use_adapter=adapter,
        )
        predictor = PASamPredictor(model, device=dev, precision=precision, fast_encoder=True)
        segmenter = AutomaticSegmenter(predictor, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        coco_images = []
        summary: list[dict[str, Any]] = []
        indices = distributed.shard(range(len(files)))  # all of them in a single process
        for path in [files[i] for i in indices]:
            arr = read_image(path)
            rgb = normalize_image(arr, channel=channel)
            h, w = rgb.shape[:2]
            bar = tqdm(
                total=segmenter.plan(h, w),
                desc=path.name,
                unit="batch",
                disable=not (progress and main),
                leave=False,
            )

            def tick(done: int, total: int, bar=bar) -> None:
                if bar.total != total:  # region proposals: known once the image is read
                    bar.total = total
                bar.update(done - bar.n)

            result = segmenter.generate(rgb, progress=tick)
            bar.close()
            labels, objects = result_objects(result, min_area=min_object_area)
            stem = path.stem
            rows = object_rows(objects)
            tif = write_label_tiff(out_dir / f"{stem}_labels.tif", labels)
            csv_path = write_csv(out_dir / f"{stem}_objects.csv", rows)
            review = [v for v, o in objects if o.attributes.get("needs_review")]
            png = save_png(
                out_dir / f"{stem}_overlay.png", instances_overlay(rgb, labels, review=review)
            )
            coco_images.append(
                ImageObjects(
                    file_name=path.name, height=h, width=w, objects=[o for _, o in objects]
                )
            )
            summary.append(
                {
                    "image": str(path),
                    "objects": len(objects),
                    "needs_review": len(review),
                    "seconds": round(result.seconds, 3),
                    "encoder_precision": predictor.precision,
                    "outputs": [str(tif), str(csv_path), str(png)],
                }
            )
            say(
                f"{path.name}: {len(objects)} objects ({len(review)} to review first), "
                f"{result.prompts} prompts in {len(result.windows)} window(s), "
                f"{result.seconds:.1f} s"
            )
        parts = distributed.gather(list(zip(indices, coco_images, summary, strict=True)))
        if parts is None:  # not rank 0: rank 0 writes the files of all images
            return
        if len(parts) > 1:  # back in file order, as one process writes them
            done = sorted((item for part in parts for item in part), key=lambda t: t[0])
            coco_images = [c for _, c, _ in done]
            summary = [s for _, _, s in done]
            typer.echo(f"{len(done)} images segmented by {len(parts)} ranks")
        coco = coco_dataset(coco_images, mode=coco_mode)
        coco["info"]["untrained_weights"] = untrained
        coco["info"]["checkpoint"] = str(checkpoint)
        coco_path = write_json(out_dir / "coco.json", coco)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        typer.echo(f"COCO: {coco_path} ({len(coco['annotations'])} objects)")
        if untrained:
            typer.echo(UNTRAINED_WARNING)


def convert_command(
    export: Annotated[
        Path,
        typer.Argument(help="A Label Studio JSON export (Export -> JSON).", dir_okay=False),
    ],
    out_dir: Annotated[Path, typer.Option(help="Output folder.", file_okay=False)] = Path(
        "pasam-convert"
    ),
    coco_mode: Annotated[
        str, typer.Option(help="Segmentations in coco.json: rle or polygon.")
    ] = "rle",
    label_images: Annotated[
        bool, typer.Option(help="Also write one label TIFF per task (TASK_labels.tif).")
    ] = True,
    use_predictions: Annotated[
        bool,
        typer.Option(help="Tasks without annotations: convert their predictions instead."),
    ] = False,
) -> None:
    """Convert a Label Studio JSON export (brush and polygon regions) to COCO (coco.json) and label images.

    Every region of a task's newest annotation is one object, its label the COCO category; image sizes come from the regions (original_width/height).
    """
    if coco_mode not in ("rle", "polygon"):
        raise typer.BadParameter(f"{coco_mode!r} is not rle or polygon", param_hint="--coco-mode")
    if not export.is_file():
        _err(f"{export}: no such file")
        raise typer.Exit(2)
    with _readable_errors():
        from .export import coco_dataset, write_json, write_label_tiff
        from .labelstudio_export import read_export, task_objects

        tasks = read_export(export)
        images = []
        skipped = []
        for task in tasks:
            try:
                im = task_objects(task, use_predictions=use_predictions)
            except ValueError as e:
                skipped.append(f"task {task.get('id', '?')}: {e}")
                continue
            if im is None:
                continue
            images.append(im)
            if label_images:
                from .export import label_image

                stem = f"task{task.get('id', len(images))}_{Path(im.file_name).stem}"
                write_label_tiff(
                    out_dir / f"{stem}_labels.tif", label_image(im.objects, im.height, im.width)
                )
        for line in skipped:
            typer.echo(f"skipped {line}", err=True)
        if not images:
            raise ValueError(f"{export}: no task has brush or polygon regions")
        coco = coco_dataset(
            images, mode=coco_mode, description=f"Label Studio export {export.name}"
        )
        path = write_json(out_dir / "coco.json", coco)
        typer.echo(
            f"{path}: {len(images)} images, {len(coco['annotations'])} objects, "
            f"{len(coco['categories'])} categories"
        )
