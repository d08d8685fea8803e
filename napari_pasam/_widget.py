"""The PA-SAM annotator dock widget.

Workflow: load a model (checkpoint file or a registry entry) -> pick an Image layer and press
"Annotate" -> click positive/negative points (``N`` toggles) or draw a box -> the current
object, the adapter's uncertainty map and its mined points appear at once -> ``K`` / "Accept"
writes the object into the labels layer with a new id -> in a stack, "Propagate" segments the
neighbouring slices until the stop rule triggers -> "Fine-tune adapter" trains the model's
adapter on the accepted objects (every plane of the labels layer holding one), swaps the
result in and saves it into ``$PASAM_MODEL_DIR`` (default ``$PASAM_CACHE_DIR/models``).

Model loading, image embedding, propagation and fine-tuning run in napari thread workers
with a progress bar; prediction from a cached embedding runs directly in the event handler
(decoder only).
Every failure is reported as a napari notification; nothing raises into the event loop.
"""

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._compat import avoid_triton_llvm_clash
from ._finetune import (
    FinetuneResult,
    FinetuneStep,
    adapt_choices,
    finetune_job,
    labelled_planes,
)
from ._jobs import _Failure, _guarded, _message, _run_safely  # noqa: F401 - re-exported
from .planes import PlaneGeometry, box_on_slice, points_on_slice
from .propagation import (
    PropagationRule,
    PropagationStep,
    PropagationSummary,
    SlicePrompt,
    SliceResult,
    object_uncertainty,
    propagate,
)

#: key bindings (installed on the viewer)
ACCEPT_KEY = "k"
TOGGLE_POLARITY_KEY = "n"

#: random-weight models offered next to the registry (for trying the tool without weights)
RANDOM_VARIANTS = ("vit_tiny", "vit_b", "vit_l", "vit_h")

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
SUGGEST_POSITIVE_COLOR = "cyan"
CURRENT_OBJECT_COLOR = "dodgerblue"
SUGGEST_NEGATIVE_COLOR = "magenta"

#: columns of the labels layer's ``features`` table (one row per object)
FEATURE_COLUMNS = ("index", "predicted_iou", "mean_uncertainty", "slice_start", "slice_stop")

_ROLE = "pasam_role"

_shared_caches: dict = {}


def embeddings_dir() -> str:
    """Where embeddings persist when the user asks for it: ``$PASAM_CACHE_DIR/embeddings``
    (``~/.cache/pasam/embeddings``), shared with the other pasam-plugins tools."""
    from pasam_plugins.paths import embeddings_dir

    return str(embeddings_dir())


def shared_embedding_cache(*, on_disk: bool = False):
    """Process-wide embedding cache: every annotator and model reload reuses embeddings
    (entries are keyed by image content and model signature). ``on_disk`` adds the
    persistent tier in :func:`embeddings_dir`."""
    avoid_triton_llvm_clash()
    from pasam_plugins.cache import EmbeddingCache

    disk = embeddings_dir() if on_disk else None
    if disk not in _shared_caches:
        _shared_caches[disk] = EmbeddingCache(max_bytes=1 << 30, disk_dir=disk)
    return _shared_caches[disk]


@dataclass
class ModelInfo:
    """What the model panel shows about the loaded model."""

    source: str
    variant: str
    has_adapter: bool
    guide_mode: str
    device: str
    untrained: bool
    finetuned: str | None = None
    #: the network in words (:meth:`pasam_plugins.origin.ModelOrigin.architecture`: says
    #: when there is no uncertainty map or mined points)
    architecture: str | None = None

    def describe(self) -> str:
        kind = self.architecture or (
            "SAM + PA-SAM adapter" if self.has_adapter else "SAM only (no adapter)"
        )
        text = f"{kind} · {self.variant} · guide mode: {self.guide_mode} · {self.device}"
        if self.untrained:
            text += "\nuntrained (random weights): masks are arbitrary"
        if self.finetuned:
            return f"{text}\n{self.finetuned}\nsaved to {self.source}"
        return f"{text}\n{self.source}"


@dataclass
class CurrentObject:
    """The object predicted from the current prompts (not yet accepted)."""

    leading: tuple[int, ...]
    mask: np.ndarray
    iou: float
    uncertainty: float | None


@dataclass
class AcceptedObject:
    label_id: int
    leading: tuple[int, ...]
    mask: np.ndarray
    iou: float
    uncertainty: float | None


def _registry_file(entry) -> str:
    """Path of a registry checkpoint: the cached copy, else downloaded (verified) into
    ``$PASAM_CACHE_DIR`` (``~/.cache/pasam``)."""
    from pasam_plugins.download import default_cache_dir, fetch

    cached = default_cache_dir() / entry.filename
    if not entry.direct_download:
        if cached.is_file():
            return str(cached)  # placed there by hand (e.g. the authors' Baidu share)
        raise ValueError(
            f"{entry.name} cannot be downloaded automatically: get {entry.filename} from "
            f"{entry.url} in a browser and put it into {cached.parent} (or choose it with "
            f"'Checkpoint file')"
        )
    return str(fetch(entry, progress=False).path)


def _load_job(
    source: str,
    device: str,
    sam_checkpoint: str | None,
    guide_mode: str | None,
    on_disk: bool = False,
):
    """Build the predictor for ``source``: a checkpoint path, ``registry:<name>`` (an entry
    of ``model/registry.json``, downloaded on first use) or ``random:<variant>``."""
    avoid_triton_llvm_clash()
    from pasam_plugins.predictor import PASamPredictor

    if source.startswith("random:"):
        from pasam_plugins.modeling import pasam_model_registry

        variant = source.split(":", 1)[1]
        if variant not in pasam_model_registry:
            raise ValueError(f"unknown model {variant!r}; known: {sorted(pasam_model_registry)}")
        model = pasam_model_registry[variant](guide_mode=guide_mode or "reference")
        label = f"{variant} with random weights (no checkpoint)"
        model.origin = model.origin.derived(untrained=True)  # carried into fine-tuned files
    else:
        from pasam_plugins.checkpoint import load_model

        path, label = source, source
        if source.startswith("registry:"):
            from pasam_plugins.registry import get_entry

            entry = get_entry(source.split(":", 1)[1])
            path = _registry_file(entry)
            if entry.requires and not sam_checkpoint:
                sam_checkpoint = _registry_file(get_entry(entry.requires))
            label = f"registry entry {entry.name}: {entry.title or entry.filename}\n{path}"
        model = load_model(
            path, device="cpu", sam_checkpoint=sam_checkpoint or None, guide_mode=guide_mode
        )
    predictor = PASamPredictor(
        model,
        device=None if device == "auto" else device,
        cache=shared_embedding_cache(on_disk=on_disk),
    )
    info = ModelInfo(
        source=label,
        variant=model.variant,
        has_adapter=bool(model.has_adapter),
        guide_mode=str(model.guide_mode),
        device=str(predictor.device),
        untrained=model.origin.untrained,
        architecture=model.origin.architecture(),
    )
    return predictor, info


def _embed_job(predictor, data, geometry: PlaneGeometry, leading, channel, key):
    plane = geometry.plane(data, leading, channel)
    predictor.set_image(plane)
    return key


def _predict_object(predictor, points, labels, box, *, has_adapter: bool):
    """One object from prompts: (prediction, mask HxW bool, iou, mean uncertainty)."""
    has_points = points is not None and len(points) > 0
    # plain SAM: a single click is ambiguous, take the best of its 3 masks (as SAM's demo)
    multimask = (not has_adapter) and box is None and has_points and len(points) == 1
    pred = predictor.predict(
        point_coords=points if has_points else None,
        point_labels=labels if has_points else None,
        box=box,
        multimask_output=multimask,
    )
    best = int(np.argmax(pred.scores)) if multimask else 0
    mask = np.asarray(pred.masks[best], dtype=bool)
    return pred, mask, float(pred.scores[best]), object_uncertainty(pred.uncertainty, mask)


def _propagation_job(
    predictor, data, geometry: PlaneGeometry, leading, channel, mask, rule, summary, has_adapter
):
    prefix = tuple(leading[:-1])

    def segment(z: int, prompt: SlicePrompt) -> SliceResult:
        predictor.set_image(geometry.plane(data, (*prefix, z), channel))
        _, m, iou, unc = _predict_object(
            predictor, prompt.points, prompt.labels, prompt.box, has_adapter=has_adapter
        )
        return SliceResult(mask=m, iou=iou, uncertainty=unc)

    try:
        yield from propagate(
            segment,
            start_slice=int(leading[-1]),
            start_mask=mask,
            num_slices=geometry.num_slices,
            rule=rule,
            summary=summary,
        )
    except Exception as exc:  # noqa: BLE001 - reported to the user by the main thread
        return _Failure(_message(exc))
    return summary


def _set_layer_array(layer, array: np.ndarray) -> None:
    """Show ``array`` in an Image/Labels layer; same shape and dtype: copy in place and
    refresh (no dims/extent recomputation, which dominates the cost of ``layer.data = ...``)."""
    data = layer.data
    if isinstance(data, np.ndarray) and data.shape == array.shape and data.dtype == array.dtype:
        np.copyto(data, array)
        layer.refresh(extent=False)
    else:
        layer.data = array


def _set_points(layer: Points, yx: np.ndarray, positive: np.ndarray) -> None:
    """Show suggestion points with their ``positive`` feature. Clearing hides the points
    (``shown``) instead of deleting them, and a new set of the same size and signs is copied
    in place: replacing a Points layer's data re-computes the viewer's dims (tens of ms)."""
    if len(yx) == 0:
        if layer.shown.any():
            layer.shown = np.zeros(len(layer.data), bool)
        return
    same_features = len(layer.features) == len(positive) and np.array_equal(
        layer.features["positive"].to_numpy(bool), positive
    )
    if len(layer.data) == len(yx) and same_features:
        np.copyto(layer.data, yx)
        if layer.shown.all():
            layer.refresh(extent=False)
        else:
            layer.shown = np.ones(len(yx), bool)
        return
    layer.data = yx
    layer.features = pd.DataFrame({"positive": positive})
    layer.shown = np.ones(len(yx), bool)
    layer.face_color = "positive"  # re-map colours from the new features


class AnnotatorWidget(QWidget):
    """PA-SAM annotation dock widget (see the module docstring).

    Arguments:
      napari_viewer: the viewer the widget is docked in.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.predictor = None
        self.model_info: ModelInfo | None = None
        self.image_layer: Image | None = None
        self.geometry: PlaneGeometry | None = None
        self.points_layer: Points | None = None
        self.boxes_layer: Shapes | None = None
        self.labels_layer: Labels | None = None
        self.current_layer: Labels | None = None
        self.uncertainty_layer: Image | None = None
        self.suggestions_layer: Points | None = None
        self.current: CurrentObject | None = None
        self.last_accepted: AcceptedObject | None = None
        self.last_propagation: list[PropagationStep] = []
        self.last_propagation_summary: PropagationSummary | None = None
        self.last_prediction_seconds: float | None = None
        self._worker = None
        self._pending_predict = False
        self._propagating: tuple[AcceptedObject, PropagationSummary] | None = None
        self._finetune_stop: threading.Event | None = None
        self.last_finetune_progress: list[FinetuneStep] = []
        self.last_finetune: FinetuneResult | None = None
        self._predictor_key: tuple | None = None
        self._shown_leading: tuple[int, ...] | None = None
        self._suspend = False
        self._build_ui()
        self._refresh_image_choices()
        self.viewer.layers.events.inserted.connect(self._refresh_image_choices)
        self.viewer.layers.events.removed.connect(self._refresh_image_choices)
        self.viewer.dims.events.current_step.connect(self._on_dims_change)
        self.viewer.bind_key(ACCEPT_KEY, self._accept_key, overwrite=True)
        self.viewer.bind_key(TOGGLE_POLARITY_KEY, self._toggle_key, overwrite=True)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.source_combo = QComboBox()
        self.source_combo.addItem("Checkpoint file", "file")
        for name, text in self._registry_choices():
            self.source_combo.addItem(text, f"registry:{name}")
        for v in RANDOM_VARIANTS:
            self.source_combo.addItem(f"{v}: random weights (no checkpoint)", f"random:{v}")
        form.addRow("Source", self.source_combo)
        row = QHBoxLayout()
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText(".safetensors / sam_vit_*.pth / sam_pa_epoch_*.pth")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.checkpoint_edit)
        row.addWidget(browse)
        form.addRow("Checkpoint", row)
        row = QHBoxLayout()
        self.sam_checkpoint_edit = QLineEdit()
        self.sam_checkpoint_edit.setPlaceholderText("only for official PA-SAM epoch_N.pth files")
        browse_sam = QPushButton("Browse…")
        browse_sam.clicked.connect(self._browse_sam)
        row.addWidget(self.sam_checkpoint_edit)
        row.addWidget(browse_sam)
        form.addRow("Base SAM", row)
        self.guide_combo = QComboBox()
        self.guide_combo.addItem("as saved in the checkpoint", None)
        self.guide_combo.addItem("reference (official PA-SAM weights)", "reference")
        self.guide_combo.addItem("image (adapters trained with guide mode image)", "image")
        form.addRow("Guide mode", self.guide_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(self._available_devices())
        form.addRow("Device", self.device_combo)
        self.disk_cache_check = QCheckBox("keep embeddings on disk")
        self.disk_cache_check.setToolTip(
            "Store image embeddings in $PASAM_CACHE_DIR/embeddings (default "
            "~/.cache/pasam/embeddings) so reopening an image or stack skips the encoder"
        )
        self.disk_cache_check.toggled.connect(self._on_disk_cache_toggled)
        form.addRow(self.disk_cache_check)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(lambda: self.load_model())
        form.addRow(self.load_button)
        self.model_label = QLabel("No model loaded")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        layout.addWidget(model_box)

        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_choice)
        form.addRow("Image layer", self.image_combo)
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.addItem("none (grayscale / RGB)", None)
        self.channel_axis_combo.addItem("first axis", 0)
        form.addRow("Channel axis", self.channel_axis_combo)
        self.channel_spin = QSpinBox()
        self.channel_spin.setRange(0, 0)
        self.channel_spin.valueChanged.connect(self._on_channel_change)
        form.addRow("Channel", self.channel_spin)
        self.start_button = QPushButton("Annotate this image")
        self.start_button.clicked.connect(lambda: self.start())
        form.addRow(self.start_button)
        layout.addWidget(image_box)

        prompt_box = QGroupBox("Prompts")
        form = QFormLayout(prompt_box)
        row = QHBoxLayout()
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        self.positive_radio.toggled.connect(lambda on: self.set_point_polarity(on))
        row.addWidget(self.positive_radio)
        row.addWidget(self.negative_radio)
        form.addRow(f"Next click ({TOGGLE_POLARITY_KEY.upper()})", row)
        row = QHBoxLayout()
        self.accept_button = QPushButton(f"Accept object ({ACCEPT_KEY.upper()})")
        self.accept_button.clicked.connect(lambda: self.accept())
        self.clear_button = QPushButton("Clear prompts")
        self.clear_button.clicked.connect(lambda: self.clear_prompts())
        row.addWidget(self.accept_button)
        row.addWidget(self.clear_button)
        form.addRow(row)
        self.object_label = QLabel("")
        form.addRow(self.object_label)
        layout.addWidget(prompt_box)

        overlay_box = QGroupBox("Uncertainty overlay")
        form = QFormLayout(overlay_box)
        self.show_uncertainty_check = QCheckBox("uncertainty map")
        self.show_uncertainty_check.setChecked(True)
        self.show_uncertainty_check.toggled.connect(self._apply_overlay_settings)
        self.show_suggestions_check = QCheckBox("suggested clicks (mined points)")
        self.show_suggestions_check.setChecked(True)
        self.show_suggestions_check.toggled.connect(self._apply_overlay_settings)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.valueChanged.connect(self._apply_overlay_settings)
        form.addRow(self.show_uncertainty_check)
        form.addRow("Opacity", self.opacity_slider)
        form.addRow(self.show_suggestions_check)
        layout.addWidget(overlay_box)

        prop_box = QGroupBox("3D propagation")
        form = QFormLayout(prop_box)
        self.min_iou_spin = QDoubleSpinBox()
        self.min_iou_spin.setRange(-1.0, 1.0)
        self.min_iou_spin.setSingleStep(0.05)
        self.min_iou_spin.setDecimals(3)
        self.min_iou_spin.setSpecialValueText("off")
        self.min_iou_spin.setValue(0.6)
        form.addRow("Stop if predicted IoU <", self.min_iou_spin)
        self.max_uncertainty_spin = QDoubleSpinBox()
        self.max_uncertainty_spin.setRange(0.0, 1.0)
        self.max_uncertainty_spin.setSingleStep(0.05)
        self.max_uncertainty_spin.setDecimals(3)
        self.max_uncertainty_spin.setValue(0.5)
        form.addRow("Stop if mean uncertainty >", self.max_uncertainty_spin)
        self.max_slices_spin = QSpinBox()
        self.max_slices_spin.setRange(0, 1_000_000)
        self.max_slices_spin.setSpecialValueText("whole stack")
        form.addRow("Slices each way", self.max_slices_spin)
        row = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate last object")
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(lambda: self.cancel())
        row.addWidget(self.propagate_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        layout.addWidget(prop_box)

        ft_box = QGroupBox("Fine-tune")
        form = QFormLayout(ft_box)
        self.adapt_combo = QComboBox()
        self.adapt_combo.setToolTip(
            "What to adapt on the frozen model: PA-SAM's adapter, a prompt learning module "
            "(PLM, arXiv 2403.09199; with the point matching loss PMM in training), both, or "
            "HQ-SAM's output token. The choices follow the loaded model."
        )
        self._fill_adapt_choices(None)
        form.addRow("Adapt", self.adapt_combo)
        self.finetune_steps_spin = QSpinBox()
        self.finetune_steps_spin.setRange(1, 100_000)
        self.finetune_steps_spin.setValue(100)
        form.addRow("Steps", self.finetune_steps_spin)
        row = QHBoxLayout()
        self.finetune_button = QPushButton("Fine-tune adapter")
        self.finetune_button.setToolTip(
            "Train what 'Adapt' names on the objects accepted into the labels layer "
            "(every plane holding an object); the result replaces the model and is saved to "
            "$PASAM_MODEL_DIR (default $PASAM_CACHE_DIR/models, ~/.cache/pasam/models)"
        )
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.finetune_cancel_button = QPushButton("Stop")
        self.finetune_cancel_button.setToolTip(
            "End fine-tuning after the current step; what was trained so far is used and saved"
        )
        self.finetune_cancel_button.clicked.connect(lambda: self.cancel())
        row.addWidget(self.finetune_button)
        row.addWidget(self.finetune_cancel_button)
        form.addRow(row)
        layout.addWidget(ft_box)

        from ._automatic import SegmentAllPanel  # issue 17: segment all, export

        self.segment_all_panel = SegmentAllPanel(self)
        layout.addWidget(self.segment_all_panel)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        # long entries (registry titles, paths) must not widen the dock
        for combo in self.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(14)
        for edit in self.findChildren(QLineEdit):
            edit.setMinimumWidth(120)

    @staticmethod
    def _registry_choices() -> list[tuple[str, str]]:
        """(name, label) of the entries of the model registry (``model/registry.json`` or
        ``$PASAM_REGISTRY``); empty, with a warning, when the registry cannot be read."""
        try:
            from pasam_plugins.registry import load_registry

            entries = load_registry()
        except Exception as exc:  # noqa: BLE001 - the widget works without a registry
            show_warning(f"PA-SAM: model registry unavailable: {_message(exc)}")
            return []
        choices = []
        for name, e in entries.items():
            how = "download" if e.direct_download else "manual download"
            choices.append((name, f"{name}: {e.title or e.filename} ({how})"))
        return choices

    @staticmethod
    def _available_devices() -> list[str]:
        devices = ["auto", "cpu"]
        try:
            avoid_triton_llvm_clash()
            import torch

            if torch.cuda.is_available():
                devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            if torch.backends.mps.is_available():
                devices.append("mps")
        except Exception:  # noqa: BLE001 - cpu always works
            pass
        return devices

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Choose a SAM / PA-SAM checkpoint",
            "",
            "Checkpoints (*.safetensors *.pth *.pt);;All files (*)",
        )
        if path:
            self.checkpoint_edit.setText(path)
            self.source_combo.setCurrentIndex(0)

    def _on_disk_cache_toggled(self, on: bool) -> None:
        if self.predictor is not None and not self.busy:
            try:
                cache = shared_embedding_cache(on_disk=bool(on))
            except OSError as exc:
                show_error(f"PA-SAM: cannot use the embeddings directory: {_message(exc)}")
                self.disk_cache_check.setChecked(False)
                return
            if on and not cache.disk_writable:  # read-only or full: memory only
                show_warning(f"PA-SAM: cannot write embeddings to {cache.disk_dir}; kept in memory")
                self.disk_cache_check.setChecked(False)
                return
            self.predictor.cache = cache
        elif self.busy:
            show_info("PA-SAM: the cache setting applies to the next model load")

    def _browse_sam(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose the base SAM checkpoint", "", "SAM checkpoints (*.pth);;All files (*)"
        )
        if path:
            self.sam_checkpoint_edit.setText(path)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while a model load, an embedding or a propagation runs."""
        return self._worker is not None

    def _start_worker(self, worker, what: str) -> None:
        self._worker = worker
        self._set_status(f"{what}…")

        def done() -> None:
            if self._worker is worker:
                self._worker = None
            if self._pending_predict and self._worker is None:
                self._pending_predict = False
                self.request_prediction()

        worker.finished.connect(done)
        worker.start()

    # ------------------------------------------------------------------ model
    def load_model(self, source: str | None = None, device: str | None = None) -> None:
        """Load a model in a worker thread: a checkpoint path, ``"registry:<name>"`` (model
        registry entry, downloaded into ``$PASAM_CACHE_DIR`` on first use) or
        ``"random:<variant>"`` (random weights)."""
        if self.busy:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if source is None:
            data = self.source_combo.currentData()
            source = self.checkpoint_edit.text().strip() if data == "file" else data
        if not source:
            show_error("PA-SAM: choose a checkpoint file (Browse…) or a registry entry first")
            return
        device = device or self.device_combo.currentText()
        worker = create_worker(
            _run_safely,
            _load_job,
            str(source),
            device,
            self.sam_checkpoint_edit.text().strip() or None,
            self.guide_combo.currentData(),
            self.disk_cache_check.isChecked(),
            _progress={"desc": "PA-SAM: loading model"},
        )
        worker.returned.connect(self._on_model_loaded)
        self._start_worker(worker, "Loading model")

    def _on_model_loaded(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._set_status(
                "Model not loaded" if self.predictor is None else "Still using the previous model"
            )
            show_error(f"PA-SAM: could not load the model: {result.message}")
            return
        self.predictor, self.model_info = result
        self._predictor_key = None
        self.model_label.setText(self.model_info.describe())
        self._fill_adapt_choices(self.predictor.model)
        self._set_status("Model loaded")
        if self.model_info.untrained:
            show_warning("PA-SAM: this model has random weights; its masks are arbitrary")
        self._pending_predict = True

    # ------------------------------------------------------------------ image
    def _image_choices(self) -> list[Image]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and _ROLE not in layer.metadata
        ]

    def _refresh_image_choices(self, event=None) -> None:
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self._image_choices():
            self.image_combo.addItem(layer.name)
        idx = self.image_combo.findText(current)
        self.image_combo.setCurrentIndex(max(idx, 0))
        self.image_combo.blockSignals(False)
        self._on_image_choice()

    def _on_image_choice(self, *_) -> None:
        layer = self._chosen_image()
        if layer is None:
            return
        self.channel_axis_combo.setEnabled(not layer.rgb)
        shape = layer.data[0].shape if layer.multiscale else layer.data.shape
        self.channel_spin.setMaximum(max(int(shape[0]) - 1, 0))

    def _chosen_image(self) -> Image | None:
        name = self.image_combo.currentText()
        for layer in self._image_choices():
            if layer.name == name:
                return layer
        return None

    def _on_channel_change(self, *_) -> None:
        if self.geometry is not None and self.geometry.channel_axis is not None:
            self.clear_current()
            self.request_prediction()

    def _level0(self, layer: Image):
        return layer.data[0] if layer.multiscale else layer.data

    def start(self, layer: Image | None = None, *, channel_axis: int | None = -1) -> None:
        """Create the prompt, labels and overlay layers for ``layer`` (default: the chosen one).

        ``channel_axis``: -1 takes the widget's choice; None or 0 set it.
        """
        layer = layer if layer is not None else self._chosen_image()
        if layer is None:
            show_error("PA-SAM: open an image first (File > Open, or File > Open Sample > PA-SAM)")
            return
        if channel_axis == -1:
            channel_axis = None if layer.rgb else self.channel_axis_combo.currentData()
        else:
            self.channel_axis_combo.setCurrentIndex(0 if channel_axis is None else 1)
        try:
            geometry = PlaneGeometry(
                tuple(self._level0(layer).shape), rgb=bool(layer.rgb), channel_axis=channel_axis
            )
        except ValueError as exc:
            show_error(f"PA-SAM: cannot annotate layer {layer.name!r}: {exc}")
            return
        if self.image_combo.findText(layer.name) >= 0:
            self.image_combo.setCurrentIndex(self.image_combo.findText(layer.name))
        self.channel_spin.setMaximum(max(geometry.num_channels - 1, 0))
        for old in (self.points_layer, self.boxes_layer):  # a previous annotation session
            if old is not None:
                old.events.data.disconnect(self._on_prompt_event)
        self.image_layer, self.geometry = layer, geometry
        self._predictor_key = None
        self.current = None
        self.last_accepted = None
        self._create_layers()
        self._shown_leading = self.current_leading()
        self._set_status(
            f"Annotating {layer.name!r}: click points ({TOGGLE_POLARITY_KEY.upper()} toggles "
            f"positive/negative) or draw a box; {ACCEPT_KEY.upper()} accepts"
        )

    def _spatial_transform(self) -> tuple[list[float], list[float]]:
        assert self.image_layer is not None and self.geometry is not None
        scale = list(self.image_layer.scale)
        translate = list(self.image_layer.translate)
        if self.geometry.channel_axis is not None:
            del scale[self.geometry.channel_axis]
            del translate[self.geometry.channel_axis]
        return scale, translate

    def _create_layers(self) -> None:
        assert self.image_layer is not None and self.geometry is not None
        g = self.geometry
        scale, translate = self._spatial_transform()
        nd = len(g.spatial_shape)
        base = self.image_layer.name
        h, w = g.plane_shape
        point_size = max(6.0, round(max(h, w) / 64))
        self._suspend = True
        try:
            self.labels_layer = Labels(
                np.zeros(g.spatial_shape, dtype=np.uint32),
                name=f"{base} PA-SAM labels",
                scale=scale,
                translate=translate,
                features=pd.DataFrame({c: pd.Series(dtype=float) for c in FEATURE_COLUMNS}),
                metadata={_ROLE: "labels"},
            )
            self.uncertainty_layer = Image(
                np.zeros((h, w), np.float32),
                name=f"{base} PA-SAM uncertainty",
                colormap="magma",
                blending="additive",
                contrast_limits=(0.0, 1.0),
                opacity=self.opacity_slider.value() / 100,
                scale=scale[-2:],
                translate=translate[-2:],
                metadata={_ROLE: "uncertainty"},
            )
            self.current_layer = Labels(
                np.zeros((h, w), np.uint8),
                name=f"{base} PA-SAM current object",
                colormap=DirectLabelColormap(
                    color_dict={None: "transparent", 0: "transparent", 1: CURRENT_OBJECT_COLOR}
                ),
                opacity=0.55,
                scale=scale[-2:],
                translate=translate[-2:],
                metadata={_ROLE: "current"},
            )
            self.suggestions_layer = Points(
                np.zeros((0, 2)),
                ndim=2,
                name=f"{base} PA-SAM suggestions",
                features=pd.DataFrame({"positive": pd.Series(dtype=bool)}),
                face_color="positive",
                face_color_cycle={True: SUGGEST_POSITIVE_COLOR, False: SUGGEST_NEGATIVE_COLOR},
                border_color="white",
                symbol="diamond",
                size=point_size,
                scale=scale[-2:],
                translate=translate[-2:],
                metadata={_ROLE: "suggestions"},
            )
            self.boxes_layer = Shapes(
                ndim=nd,
                name=f"{base} PA-SAM boxes",
                edge_color="yellow",
                face_color="transparent",
                edge_width=max(1.0, point_size / 4),
                scale=scale,
                translate=translate,
                metadata={_ROLE: "boxes"},
            )
            self.points_layer = Points(
                np.zeros((0, nd)),
                ndim=nd,
                name=f"{base} PA-SAM points",
                features=pd.DataFrame({"positive": pd.Series(dtype=bool)}),
                feature_defaults={"positive": True},
                face_color="positive",
                face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                border_color="white",
                size=point_size,
                scale=scale,
                translate=translate,
                metadata={_ROLE: "points"},
            )
            for layer in (
                self.labels_layer,
                self.uncertainty_layer,
                self.current_layer,
                self.suggestions_layer,
                self.boxes_layer,
                self.points_layer,
            ):
                self.viewer.add_layer(layer)
        finally:
            self._suspend = False
        self.set_point_polarity(self.positive_radio.isChecked())
        self.points_layer.events.data.connect(self._on_prompt_event)
        self.boxes_layer.events.data.connect(self._on_prompt_event)
        self.boxes_layer.mode = "add_rectangle"  # ready to draw when the user selects it
        self.points_layer.mode = "add"
        self.viewer.layers.selection.active = self.points_layer
        self._apply_overlay_settings()

    def _apply_overlay_settings(self, *_) -> None:
        if self.uncertainty_layer is not None:
            self.uncertainty_layer.visible = self.show_uncertainty_check.isChecked()
            self.uncertainty_layer.opacity = self.opacity_slider.value() / 100
        if self.suggestions_layer is not None:
            self.suggestions_layer.visible = self.show_suggestions_check.isChecked()

    def current_leading(self) -> tuple[int, ...]:
        """Slice indices (data coordinates of the spatial axes before Y, X) under the dims."""
        if self.image_layer is None or self.geometry is None:
            return ()
        pos = list(self.image_layer.world_to_data(self.viewer.dims.point))
        if self.geometry.channel_axis is not None:
            del pos[self.geometry.channel_axis]
        return self.geometry.clamp_index(pos[:-2])

    # ------------------------------------------------------------------ prompts
    def set_point_polarity(self, positive: bool) -> None:
        """Whether the next clicked point is positive (foreground) or negative."""
        positive = bool(positive)
        if self.positive_radio.isChecked() != positive:
            self.positive_radio.blockSignals(True)
            self.positive_radio.setChecked(positive)
            self.negative_radio.setChecked(not positive)
            self.positive_radio.blockSignals(False)
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"positive": positive}

    def _toggle_key(self, viewer=None) -> None:
        self.set_point_polarity(not self.positive_radio.isChecked())

    def _accept_key(self, viewer=None) -> None:
        self.accept()

    def _on_prompt_event(self, event) -> None:
        if self._suspend:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # 'adding', 'changing', 'removing': wait for the final event
            return
        self.request_prediction()

    def _on_dims_change(self, event=None) -> None:
        if self.geometry is None or self.geometry.leading_ndim == 0:
            return
        leading = self.current_leading()
        if leading != self._shown_leading:
            self._shown_leading = leading
            self.clear_current()
            self.request_prediction()

    def _plane_key(self, leading: tuple[int, ...]) -> tuple:
        assert self.image_layer is not None
        channel = self.channel_spin.value() if self.geometry.channel_axis is not None else None
        return (id(self.image_layer), id(self._level0(self.image_layer)), leading, channel)

    def prompts(self, leading: tuple[int, ...] | None = None):
        """(points Nx2 (x, y), labels N, box (x0, y0, x1, y1) or None) on a slice."""
        leading = self.current_leading() if leading is None else leading
        xy, lab = points_on_slice(
            self.points_layer.data, self.points_layer.features["positive"].to_numpy(), leading
        )
        box = box_on_slice(self.boxes_layer.data, self.boxes_layer.shape_type, leading)
        return xy, lab, box

    def request_prediction(self) -> None:
        """Predict the current object from the prompts on the current slice, embedding the
        slice first (in a worker) if the predictor holds another one."""
        if self.geometry is None or self.points_layer is None or self.predictor is None:
            return
        if self.busy:
            self._pending_predict = True
            return
        leading = self.current_leading()
        xy, lab, box = self.prompts(leading)
        if len(xy) == 0 and box is None:
            self.clear_current()
            return
        key = self._plane_key(leading)
        if key != self._predictor_key:
            self._start_embedding(leading, key)
            return
        self._predict(leading, xy, lab, box)

    def _start_embedding(self, leading: tuple[int, ...], key: tuple) -> None:
        self._pending_predict = True
        worker = create_worker(
            _run_safely,
            _embed_job,
            self.predictor,
            self._level0(self.image_layer),
            self.geometry,
            leading,
            key[3],
            key,
            _progress={"desc": "PA-SAM: embedding image"},
        )
        worker.returned.connect(self._on_embedded)
        self._start_worker(worker, "Embedding image")

    def _on_embedded(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._pending_predict = False
            self._predictor_key = None
            self._set_status("Embedding failed")
            show_error(f"PA-SAM: could not embed the image: {result.message}")
            return
        self._predictor_key = result
        self._set_status("Ready")

    def _predict(self, leading, xy, lab, box) -> None:
        t0 = time.perf_counter()
        try:
            pred, mask, iou, unc = _predict_object(
                self.predictor,
                xy,
                lab,
                box,
                has_adapter=bool(self.model_info and self.model_info.has_adapter),
            )
        except Exception as exc:  # noqa: BLE001 - shown as a notification
            show_error(f"PA-SAM: prediction failed: {_message(exc)}")
            return
        self.current = CurrentObject(leading=leading, mask=mask, iou=iou, uncertainty=unc)
        self._show_prediction(pred, mask)
        self.last_prediction_seconds = time.perf_counter() - t0
        text = f"predicted IoU {iou:.3f}"
        if unc is not None:
            text += f" · mean uncertainty {unc:.3f}"
        self.object_label.setText(text + f" · {int(mask.sum())} px")

    def suggestions(self) -> tuple[np.ndarray, np.ndarray]:
        """The suggested next clicks on display: Nx2 (y, x) and N bool (positive)."""
        layer = self.suggestions_layer
        if layer is None or len(layer.data) == 0:
            return np.zeros((0, 2)), np.zeros(0, bool)
        shown = np.asarray(layer.shown, bool)
        return layer.data[shown], layer.features["positive"].to_numpy(bool)[shown]

    def _show_prediction(self, pred, mask: np.ndarray) -> None:
        self._shown_leading = self.current.leading if self.current else self._shown_leading
        self._ensure_layer(self.current_layer)
        _set_layer_array(self.current_layer, mask.astype(np.uint8))
        self._ensure_layer(self.uncertainty_layer)
        if pred.uncertainty is not None:
            _set_layer_array(self.uncertainty_layer, np.asarray(pred.uncertainty, np.float32))
        else:
            _set_layer_array(self.uncertainty_layer, np.zeros(mask.shape, np.float32))
        self._ensure_layer(self.suggestions_layer)
        if pred.mined_points is not None:
            pts = np.asarray(pred.mined_points, dtype=np.float64)[:, ::-1]  # (x, y) -> (y, x)
            _set_points(self.suggestions_layer, pts, np.asarray(pred.mined_labels) == 1)
        else:
            _set_points(self.suggestions_layer, np.zeros((0, 2)), np.zeros(0, bool))

    def _ensure_layer(self, layer) -> None:
        """Re-add one of our layers if the user deleted it."""
        if layer is not None and layer not in self.viewer.layers:
            active = self.viewer.layers.selection.active
            self.viewer.add_layer(layer)
            if active is not None:
                self.viewer.layers.selection.active = active

    def clear_current(self) -> None:
        """Forget the current (unaccepted) prediction and blank the overlays."""
        self.current = None
        self.object_label.setText("")
        if self.current_layer is None:
            return
        h, w = self.geometry.plane_shape
        if self.current_layer.data.any():
            _set_layer_array(self.current_layer, np.zeros((h, w), np.uint8))
        if self.uncertainty_layer.data.any():
            _set_layer_array(self.uncertainty_layer, np.zeros((h, w), np.float32))
        _set_points(self.suggestions_layer, np.zeros((0, 2)), np.zeros(0, bool))

    def clear_prompts(self) -> None:
        """Remove all prompt points and boxes and the current prediction."""
        if self.points_layer is None:
            return
        self._suspend = True
        try:
            nd = self.points_layer.ndim
            self.points_layer.data = np.zeros((0, nd))
            if len(self.boxes_layer.data):
                self.boxes_layer.selected_data = set(range(len(self.boxes_layer.data)))
                self.boxes_layer.remove_selected()
        finally:
            self._suspend = False
        self.clear_current()

    # ------------------------------------------------------------------ accept
    def _next_label_id(self) -> int:
        feats = self.labels_layer.features
        top = int(feats["index"].max()) if len(feats) else 0
        return max(top, int(self.labels_layer.data.max())) + 1

    def accept(self) -> int | None:
        """Write the current object into the labels layer with a new id; returns the id."""
        cur = self.current
        if cur is None or not cur.mask.any():
            show_warning("PA-SAM: nothing to accept; click a point or draw a box first")
            return None
        self._ensure_layer(self.labels_layer)
        label_id = self._next_label_id()
        plane = self.labels_layer.data[cur.leading] if cur.leading else self.labels_layer.data
        plane[cur.mask] = label_id
        self.labels_layer.refresh()
        z = cur.leading[-1] if cur.leading else 0
        row = {
            "index": label_id,
            "predicted_iou": cur.iou,
            "mean_uncertainty": np.nan if cur.uncertainty is None else cur.uncertainty,
            "slice_start": z,
            "slice_stop": z,
        }
        self._set_features_row(row)
        self.last_accepted = AcceptedObject(
            label_id, cur.leading, cur.mask.copy(), cur.iou, cur.uncertainty
        )
        self.clear_prompts()
        self._set_status(f"Accepted object {label_id}")
        return label_id

    def _set_features_row(self, row: dict) -> None:
        feats = self.labels_layer.features
        feats = feats[feats["index"] != row["index"]] if len(feats) else feats
        new = pd.DataFrame([row], columns=list(FEATURE_COLUMNS))
        table = new if len(feats) == 0 else pd.concat([feats, new], ignore_index=True)
        table = table.astype({"index": int, "slice_start": int, "slice_stop": int})
        self.labels_layer.features = table.sort_values("index").reset_index(drop=True)

    # ------------------------------------------------------------------ propagate
    def propagation_rule(self) -> PropagationRule:
        """The stop rule shown in the widget."""
        min_iou = self.min_iou_spin.value()
        return PropagationRule(
            min_iou=None if min_iou <= self.min_iou_spin.minimum() else min_iou,
            max_uncertainty=self.max_uncertainty_spin.value(),
            max_slices=self.max_slices_spin.value() or None,
        )

    def propagate(self) -> None:
        """Propagate the last accepted object through the stack (worker, cancellable)."""
        if self.busy:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        obj = self.last_accepted
        if obj is None or self.geometry is None:
            show_warning("PA-SAM: accept an object first, then propagate it")
            return
        if self.geometry.leading_ndim == 0:
            show_warning("PA-SAM: propagation needs a stack (3D or more); this image is 2D")
            return
        rule = self.propagation_rule()
        n = self.geometry.num_slices - 1
        total = min(n, 2 * rule.max_slices) if rule.max_slices else n
        summary = PropagationSummary()
        self.last_propagation = []
        self.last_propagation_summary = summary
        self._propagating = (obj, summary)
        channel = self.channel_spin.value() if self.geometry.channel_axis is not None else None
        worker = create_worker(
            _propagation_job,
            self.predictor,
            self._level0(self.image_layer),
            self.geometry,
            obj.leading,
            channel,
            obj.mask,
            rule,
            summary,
            bool(self.model_info and self.model_info.has_adapter),
            _progress={
                "total": max(total, 1),
                "desc": f"PA-SAM: propagating object {obj.label_id}",
            },
        )
        worker.yielded.connect(self._on_propagation_step)
        worker.returned.connect(self._on_propagation_returned)
        worker.aborted.connect(self._on_propagation_aborted)
        worker.finished.connect(self._on_propagation_finished)
        self._predictor_key = None  # the worker moves the predictor between slices
        self._start_worker(worker, f"Propagating object {obj.label_id}")

    def cancel(self) -> None:
        """Stop a running propagation after the slice in progress, or fine-tuning after the
        step in progress (keeping the adapter trained so far)."""
        if self._finetune_stop is not None:
            self._finetune_stop.set()
            self._set_status("Stopping fine-tuning after the current step…")
            return
        worker = self._worker
        if worker is not None and hasattr(worker, "quit"):
            worker.quit()

    def _on_propagation_step(self, step: PropagationStep) -> None:
        self.last_propagation.append(step)
        if not step.kept:
            return
        obj, _ = self._propagating
        index = (*obj.leading[:-1], step.slice_index)
        self.labels_layer.data[index][step.result.mask] = obj.label_id
        self.labels_layer.refresh()

    def _on_propagation_returned(self, result: Any) -> None:
        if isinstance(result, _Failure):
            show_error(f"PA-SAM: propagation failed: {result.message}")

    def _on_propagation_aborted(self) -> None:
        if self.last_propagation_summary is not None:
            self.last_propagation_summary.cancelled = True

    def _on_propagation_finished(self) -> None:
        obj, summary = self._propagating
        kept = [s for s in self.last_propagation if s.kept]
        z0 = obj.leading[-1]
        slices = [z0] + [s.slice_index for s in kept]
        ious = [obj.iou] + [s.result.iou for s in kept]
        uncs = [obj.uncertainty] + [s.result.uncertainty for s in kept]
        uncs = [u for u in uncs if u is not None]
        self._set_features_row(
            {
                "index": obj.label_id,
                "predicted_iou": float(np.mean(ious)),
                "mean_uncertainty": float(np.mean(uncs)) if uncs else np.nan,
                "slice_start": min(slices),
                "slice_stop": max(slices),
            }
        )
        names = {1: "up", -1: "down"}
        stops = ", ".join(f"{names[d]}: {r}" for d, r in summary.stops.items())
        msg = f"PA-SAM: object {obj.label_id} on slices {min(slices)}..{max(slices)}"
        msg += " (cancelled)" if summary.cancelled else f" ({stops})"
        self._set_status(msg.removeprefix("PA-SAM: "))
        show_info(msg)

    # ------------------------------------------------------------------ fine-tune
    def _fill_adapt_choices(self, model) -> None:
        """The 'Adapt' choices for ``model`` (all of them before a model is loaded); keeps
        the current choice when it still fits."""
        from ._finetune import ADAPT_CHOICES

        current = self.adapt_combo.currentData()
        choices = ADAPT_CHOICES if model is None else adapt_choices(model)
        self.adapt_combo.clear()
        for value, label in choices:
            self.adapt_combo.addItem(label, value)
        values = [v for v, _ in choices]
        if current in values:
            self.adapt_combo.setCurrentIndex(values.index(current))

    def finetune(self, steps: int | None = None, train: str | None = None) -> None:
        """Fine-tune the model's adapter on the accepted objects (worker, progress bar,
        stoppable with :meth:`cancel`); the result becomes the widget's model and is saved
        into :func:`napari_pasam._finetune.models_dir`."""
        if self.busy:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if self.predictor is None:
            show_error("PA-SAM: load a model first, then fine-tune it")
            return
        planes = []
        if self.labels_layer is not None and self.geometry is not None:
            planes = labelled_planes(self.labels_layer.data, self.geometry.leading_ndim)
        if not planes:
            show_error(
                "PA-SAM: no accepted objects to train on: annotate an image and accept "
                f"objects ({ACCEPT_KEY.upper()}) into its labels layer first"
            )
            return
        steps = int(steps or self.finetune_steps_spin.value())
        train = train or self.adapt_combo.currentData() or "adapter"
        data = self.labels_layer.data
        labels = {p: np.array(data[p]) for p in planes}  # snapshot: the user may keep editing
        n_objects = sum(len(np.setdiff1d(np.unique(lab), [0])) for lab in labels.values())
        channel = self.channel_spin.value() if self.geometry.channel_axis is not None else None
        self._finetune_stop = threading.Event()
        self.last_finetune_progress = []
        worker = create_worker(
            _guarded,
            finetune_job,
            self.predictor,
            self._level0(self.image_layer),
            self.geometry,
            labels,
            channel=channel,
            steps=steps,
            image_name=self.image_layer.name,
            stop=self._finetune_stop,
            train=train,
            _progress={"total": steps, "desc": f"PA-SAM: fine-tuning ({train})"},
        )
        worker.yielded.connect(self._on_finetune_step)
        worker.returned.connect(self._on_finetune_returned)
        worker.finished.connect(self._on_finetune_finished)
        self._start_worker(
            worker, f"Fine-tuning on {n_objects} objects in {len(planes)} planes ({steps} steps)"
        )

    def _on_finetune_step(self, step: FinetuneStep) -> None:
        self.last_finetune_progress.append(step)
        if not self._finetune_stop or not self._finetune_stop.is_set():
            self._set_status(f"Fine-tuning: step {step.step}/{step.total}, loss {step.loss:.4f}")

    def _on_finetune_returned(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._set_status("Fine-tuning failed; the model is unchanged")
            show_error(f"PA-SAM: fine-tuning failed: {result.message}")
            return
        if result.predictor is None:
            self._set_status("Fine-tuning stopped before the first step; the model is unchanged")
            show_info("PA-SAM: fine-tuning stopped before the first step; the model is unchanged")
            return
        self.last_finetune = result
        self.predictor = result.predictor
        self._predictor_key = None  # re-embed: the new guiding conv changes the guide
        assert self.model_info is not None
        self.model_info = replace(
            self.model_info,
            source=str(result.path),
            has_adapter=bool(result.predictor.model.has_adapter),
            guide_mode=str(result.predictor.model.guide_mode),
            finetuned=result.describe(),
            architecture=result.predictor.model.origin.architecture(),
        )
        self._fill_adapt_choices(result.predictor.model)
        self.model_label.setText(self.model_info.describe())
        self._set_status(f"Using the {result.describe()}")
        show_info(f"PA-SAM: {result.describe()}; saved to {result.path}")
        self._pending_predict = True  # re-predict the current prompts with the new model

    def _on_finetune_finished(self) -> None:
        self._finetune_stop = None
