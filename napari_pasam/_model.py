"""Loading a model into the annotator: the sources the panel offers (the shipped models
first, the registry's default ``pasam_micro`` chosen; then a checkpoint file, registry
entries, random weights), loading in a worker, switching
models. The loaded model is a :class:`~napari_pasam.jobs.ModelSlot` (the core's
``Segmenter`` and what the panel shows about it, from ``model.origin``)."""

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from .jobs import RANDOM_SOURCES, Failure, load_job, message_of, run_safely


class ModelMixin:
    """Model panel logic for :class:`AnnotatorWidget`."""

    def _fill_sources(self) -> None:
        """The sources: the models shipped with the package (registry entries with a
        bundled file; the registry's DEFAULT_MODEL first and chosen), a checkpoint file,
        the other registry entries, random weights (explicit choices only)."""
        combo = self.model_panel.source_combo
        try:
            from pasam_plugins.registry import DEFAULT_MODEL, load_registry

            entries = load_registry()
        except Exception as exc:  # noqa: BLE001 - the widget works without a registry
            show_warning(f"PA-SAM: model registry unavailable: {message_of(exc)}")
            DEFAULT_MODEL, entries = None, {}  # noqa: N806
        shipped = sorted(
            (e for e in entries.values() if e.bundled), key=lambda e: e.name != DEFAULT_MODEL
        )
        for e in shipped:
            default = " (default)" if e.name == DEFAULT_MODEL else ""
            combo.addItem(f"{e.name}: shipped with pasam-plugins{default}", f"registry:{e.name}")
            combo.setItemData(combo.count() - 1, e.title or e.filename, Qt.ItemDataRole.ToolTipRole)
        combo.addItem("Checkpoint file", "file")
        for name, e in entries.items():
            if e.bundled:
                continue
            how = "download" if e.direct_download else "manual download"
            combo.addItem(f"{name}: {e.title or e.filename} ({how})", f"registry:{name}")
        for spec in RANDOM_SOURCES:
            combo.addItem(f"{spec}: random weights (no checkpoint)", f"random:{spec}")
        combo.setCurrentIndex(0)  # the shipped default model when there is one

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a SAM / PA-SAM checkpoint", "", "Checkpoints (*.safetensors *.pth *.pt)"
        )
        if path:
            self.model_panel.checkpoint_edit.setText(path)
            combo = self.model_panel.source_combo
            combo.setCurrentIndex(combo.findData("file"))

    def _browse_sam(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose the base SAM checkpoint", "", "SAM checkpoints (*.pth)"
        )
        if path:
            self.model_panel.sam_checkpoint_edit.setText(path)

    def _on_disk_cache_toggled(self, on: bool) -> None:
        if self.slot is None or self.runner.busy:
            if self.runner.busy:
                show_info("PA-SAM: the cache setting applies to the next model load")
            return
        from .jobs import shared_embedding_cache

        try:
            cache = shared_embedding_cache(on_disk=bool(on))
        except OSError as exc:
            show_error(f"PA-SAM: cannot use the embeddings directory: {message_of(exc)}")
            self.model_panel.disk_cache_check.setChecked(False)
            return
        if on and not cache.disk_writable:  # read-only or full: memory only
            show_warning(f"PA-SAM: cannot write embeddings to {cache.disk_dir}; kept in memory")
            self.model_panel.disk_cache_check.setChecked(False)
            return
        self.slot.predictor.cache = cache

    # ------------------------------------------------------------------ model
    def load_model(self, source: str | None = None, device: str | None = None) -> None:
        """Load a model in a worker: a checkpoint path, ``registry:<name>`` (the shipped
        models are registry entries: ``registry:pasam_micro`` is the default),
        ``bundled:<file>`` or ``random:<variant>[+zoom]``."""
        if self.runner.long_running:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        m = self.model_panel
        if source is None:
            data = m.source_combo.currentData()
            source = m.checkpoint_edit.text().strip() if data == "file" else data
        if not source:
            show_error("PA-SAM: choose a checkpoint file (…) or a registry entry first")
            return
        worker = create_worker(
            run_safely,
            load_job,
            str(source),
            device or m.device_combo.currentText(),
            m.sam_checkpoint_edit.text().strip() or None,
            m.guide_combo.currentData(),
            m.disk_cache_check.isChecked(),
            m.precision_combo.currentText(),
            _progress={"desc": "PA-SAM: loading model"},
        )
        self.runner.start(
            worker, kind="load", title="Loading model", on_return=self._on_model_loaded
        )

    def _on_model_loaded(self, result) -> None:
        if isinstance(result, Failure):
            self.set_status(
                "Model not loaded" if self.slot is None else "Still using the previous model"
            )
            show_error(f"PA-SAM: could not load the model: {result.message}")
            return
        self.use_slot(result[0])
        self.model_panel.set_devices(result[1])
        self.set_status("Model loaded")
        if self.slot.info.untrained:
            show_warning("PA-SAM: this model has random weights; its masks are arbitrary")

    def use_slot(self, slot) -> None:
        """Switch to another model: the current prediction (and its suggestions) belonged
        to the old one, so it is cleared and re-predicted from the prompts."""
        self.slot = slot
        self.model_panel.model_label.set_full_text(slot.info.describe())
        self.finetune_panel.set_adapt_choices(slot.model)
        from pasam_plugins.automatic import default_settings

        # "Segment all" shows this model's defaults (zoomed models have their own)
        self.segment_all_panel.use_defaults(default_settings(slot.model))
        self.clear_current(keep_clicks=True)
        self._pending_predict = self.layers is not None
