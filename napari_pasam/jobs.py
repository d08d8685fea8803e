"""The annotator's work off the UI thread (no Qt): loading a model, segmenting the current
object (embedding its plane first when needed), propagating an object through a stack,
segmenting every object of planes without prompts ("Segment all").

Every prediction goes through the core's :class:`pasam_plugins.segment.Segmenter` (the
multimask rule, the positive-click check, prompt mapping, zoomed windows for this project's
small models); nothing here decides how an object is segmented. torch and the model code are
imported inside these functions, i.e. in the worker thread, so that opening the dock and
starting an annotation never pay for them on the UI thread.

A :class:`ModelSlot` holds the segmenter, the plane it holds and a lock: one job at a time
uses the model, and a job that was cancelled (its result discarded) still leaves the slot
in a known state.
"""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import avoid_triton_llvm_clash
from .large import LazyPlane, is_lazy, level_sample, reads_in_windows
from .planes import PlaneGeometry
from .propagation import (
    PropagationRule,
    PropagationStep,
    PropagationSummary,
    SlicePrompt,
    SliceResult,
    propagate,
)
from .session import ModelInfo, Prompts

#: random-weight models offered in the panel (for trying the tool without weights); a
#: ``+zoom`` suffix builds it with the zoom settings of this project's small models
RANDOM_SOURCES = ("vit_tiny", "vit_tiny256+zoom", "vit_s256+zoom", "vit_b")
ZOOM_SUFFIX = "+zoom"

_shared_caches: dict = {}


@dataclass
class Failure:
    """An exception in a worker, as the message the user sees."""

    message: str


def message_of(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {text}"


def run_safely(fn, *args, **kwargs):
    """Run ``fn`` (in a worker thread); an exception comes back as a :class:`Failure`."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the user by the main thread
        return Failure(message_of(exc))


def guarded(gen_fn, *args, **kwargs):
    """Run the generator ``gen_fn`` (in a worker thread); an exception ends it with a
    :class:`Failure` return value."""
    try:
        return (yield from gen_fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - reported to the user by the main thread
        return Failure(message_of(exc))


# ---------------------------------------------------------------------------- model
def shared_embedding_cache(*, on_disk: bool = False):
    """Process-wide embedding cache: every annotator and model reload reuses embeddings
    (keyed by image content and model signature). ``on_disk`` adds the persistent tier in
    :func:`pasam_plugins.paths.embeddings_dir`."""
    avoid_triton_llvm_clash()
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.paths import embeddings_dir

    disk = str(embeddings_dir()) if on_disk else None
    if disk not in _shared_caches:
        _shared_caches[disk] = EmbeddingCache(max_bytes=1 << 30, disk_dir=disk)
    return _shared_caches[disk]


def available_devices() -> list[str]:
    """Devices torch can use here (imports torch: call it in a worker)."""
    devices = ["auto", "cpu"]
    avoid_triton_llvm_clash()
    import torch

    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _registry_file(entry) -> str:
    """The local file of a registry entry (cached, placed there by hand, or downloaded)."""
    from pasam_plugins.download import local_checkpoint

    return str(local_checkpoint(entry))


def _random_model(spec: str, guide_mode: str | None):
    from pasam_plugins.modeling import pasam_model_registry
    from pasam_plugins.segment import ZoomSettings

    variant = spec.removesuffix(ZOOM_SUFFIX)
    if variant not in pasam_model_registry:
        raise ValueError(f"unknown model {variant!r}; known: {sorted(pasam_model_registry)}")
    model = pasam_model_registry[variant](guide_mode=guide_mode or "reference")
    meta = {"zoom": ZoomSettings().to_metadata()} if spec.endswith(ZOOM_SUFFIX) else {}
    # the untrained flag and the zoom settings travel into fine-tuned files
    model.origin = model.origin.derived(untrained=True, metadata=meta)
    zoomed = " zoomed" if meta else ""
    return model, f"{variant}{zoomed} with random weights (no checkpoint)"


@dataclass
class ModelSlot:
    """The loaded model: a :class:`~pasam_plugins.segment.Segmenter`, the key of the plane
    it holds and the lock every job takes to use it; and, for prefetching, a second
    segmenter on the same model (:meth:`background`)."""

    segmenter: Any
    info: ModelInfo
    image_key: tuple | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _background: Any = None
    #: the plane the background segmenter holds, and the lock of its users (prefetching)
    background_key: tuple | None = None
    background_lock: threading.Lock = field(default_factory=threading.Lock)

    def background(self):
        """A second segmenter on the same model, embedding cache and settings (no compile of
        its own): prefetching embeds with it without the slot's lock, so a click never waits
        for a prefetched encoder run (the two only share the processor). Made on first use."""
        if self._background is None:
            from pasam_plugins.predictor import PASamPredictor
            from pasam_plugins.segment import Segmenter

            seg = self.segmenter
            p = seg.predictor
            twin = PASamPredictor(p.model, **{**p.settings(), "compile_encoder": False})
            self._background = Segmenter(
                twin,
                zoom=seg.zoom,
                view=seg.view,
                tile=seg.tile,
                halo=seg.halo,
                tile_above=seg.tile_above,
            )
        return self._background

    @property
    def predictor(self):
        return self.segmenter.predictor

    @property
    def model(self):
        return self.segmenter.model


def make_slot(predictor, info: ModelInfo) -> ModelSlot:
    from pasam_plugins.segment import Segmenter

    return ModelSlot(Segmenter(predictor), info)


def model_info(model, predictor, label: str, path: str | None = None) -> ModelInfo:
    origin = model.origin
    return ModelInfo(
        source=label,
        variant=str(model.variant),
        has_adapter=bool(model.has_adapter),
        guide_mode=str(model.guide_mode),
        device=str(predictor.device),
        untrained=bool(origin.untrained),
        zoomed=origin.zoom is not None,
        path=path or origin.file,
        architecture=origin.architecture(),
    )


def load_job(
    source: str,
    device: str,
    sam_checkpoint: str | None,
    guide_mode: str | None,
    on_disk: bool = False,
    precision: str = "auto",
) -> tuple[ModelSlot, list[str]]:
    """Build the model for ``source``: a checkpoint path, ``bundled:<file>`` (shipped in
    ``model/weights``), ``registry:<name>`` (downloaded on first use) or
    ``random:<variant>[+zoom]``. The image encoder runs its fast path in ``precision``
    (``auto``: bf16 where it is fast). Returns the slot and the devices torch can use."""
    avoid_triton_llvm_clash()
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor

    if source.startswith("random:"):
        model, label = _random_model(source.split(":", 1)[1], guide_mode)
    else:
        path, label = source, source
        if source.startswith("bundled:"):
            from pasam_plugins.paths import model_data_dir

            path = str(model_data_dir() / "weights" / source.split(":", 1)[1])
            label = f"shipped model {Path(path).name}\n{path}"
        elif source.startswith("registry:"):
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
        precision=precision,
        fast_encoder=True,
    )
    slot = make_slot(predictor, model_info(model, predictor, label))
    return slot, available_devices()


# ---------------------------------------------------------------------------- one object
@dataclass(frozen=True)
class PlaneRef:
    """Which plane of which layer data: ``key`` identifies it (image, slice, channel);
    ``overview``: a coarse level of the layer's pyramid (contrast levels of a large plane)."""

    data: Any
    geometry: PlaneGeometry
    leading: tuple[int, ...]
    channel: int | None
    key: tuple
    overview: Any = None

    def read(self) -> np.ndarray:
        return self.geometry.plane(self.data, self.leading, self.channel)

    def for_segmenter(self, segmenter) -> tuple[Any, Any]:
        """The image ``segmenter.set_image`` gets and its contrast ``sample``: the plane as
        numpy (a view of a numpy layer), or for a dask/zarr layer that the segmenter reads
        in windows a :class:`~napari_pasam.large.LazyPlane` (never read whole)."""
        if is_lazy(self.data):
            lazy = LazyPlane(self.data, self.geometry, self.leading, self.channel)
            if reads_in_windows(segmenter, lazy.shape):
                g, lead, ch = self.geometry, self.leading, self.channel
                return lazy, level_sample(lazy, self.overview, g, lead, ch)
        return self.read(), None


@dataclass
class Prediction:
    """A prediction ready for display: the core's result plus the arrays the layers show
    (computed in the worker, so that the UI thread only copies them in)."""

    plane: PlaneRef
    prompts: Prompts
    result: Any
    current: np.ndarray
    uncertainty: np.ndarray | None
    suggestions: np.ndarray
    suggestions_positive: np.ndarray
    seconds: float
    embedded: bool


def hold_plane(slot: ModelSlot, plane: PlaneRef) -> bool:
    """Give the segmenter ``plane`` unless it holds it (call with ``slot.lock`` held).
    Returns whether the image was set (embedded for whole-image models)."""
    if slot.image_key == plane.key:
        return False
    slot.image_key = None
    image, sample = plane.for_segmenter(slot.segmenter)
    slot.segmenter.set_image(image, sample=sample)
    slot.image_key = plane.key
    return True


def predict_job(slot: ModelSlot, plane: PlaneRef, prompts: Prompts, previous=None) -> Prediction:
    """Segment the current object from ``prompts`` on ``plane`` (``previous``: the object's
    last result, for a refinement click)."""
    t0 = time.perf_counter()
    with slot.lock:
        embedded = hold_plane(slot, plane)
        result = slot.segmenter.segment(
            prompts.points if len(prompts.points) else None,
            prompts.labels if len(prompts.points) else None,
            prompts.box,
            previous=previous,
        )
    if result.mined_points is not None and result.mined_labels is not None:
        yx = np.asarray(result.mined_points, np.float64)[:, ::-1].copy()
        positive = np.asarray(result.mined_labels) == 1
    else:
        yx, positive = np.zeros((0, 2)), np.zeros(0, bool)
    unc = None if result.uncertainty is None else np.asarray(result.uncertainty, np.float32)
    return Prediction(
        plane=plane,
        prompts=prompts,
        result=result,
        current=np.asarray(result.mask, np.uint8),
        uncertainty=unc,
        suggestions=yx,
        suggestions_positive=positive,
        seconds=time.perf_counter() - t0,
        embedded=embedded,
    )


# ---------------------------------------------------------------------------- propagation
def propagation_job(
    slot: ModelSlot,
    data,
    geometry: PlaneGeometry,
    leading: tuple[int, ...],
    channel: int | None,
    mask: np.ndarray,
    rule: PropagationRule,
    summary: PropagationSummary,
    image_id: tuple,
) -> Iterator[PropagationStep]:
    """Generator for a thread worker: propagate ``mask`` from plane ``leading`` through the
    stack, one :class:`PropagationStep` per slice, each slice segmented by the Segmenter
    from the previous slice's mask (:func:`propagation.prompt_from_mask`). ``image_id``
    starts the plane keys (as the widget's ``plane_key``)."""
    prefix = tuple(leading[:-1])

    def segment(z: int, prompt: SlicePrompt) -> SliceResult:
        key = (*image_id, (*prefix, z), channel)
        ref = PlaneRef(data, geometry, (*prefix, z), channel, key)
        with slot.lock:
            hold_plane(slot, ref)
            obj = slot.segmenter.segment(prompt.points, prompt.labels, prompt.box)
        return SliceResult(
            mask=obj.mask, iou=float(obj.score), uncertainty=obj.mean_uncertainty, result=obj
        )

    yield from propagate(
        segment,
        start_slice=int(leading[-1]),
        start_mask=mask,
        num_slices=geometry.num_slices,
        rule=rule,
        summary=summary,
    )
    return summary


# ---------------------------------------------------------------------------- segment all
def segment_all_job(
    slot: ModelSlot,
    data,
    geometry: PlaneGeometry,
    planes: list[tuple[int, ...]],
    channel: int | None,
    settings: dict,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, int]]:
    """Generator for a thread worker: every object of each plane in ``planes`` by the core's
    :class:`pasam_plugins.automatic.AutomaticSegmenter` (the rules of ``pasam segment-all``
    and the Label Studio backend) with ``settings``, keyword arguments of
    :func:`~pasam_plugins.automatic.default_settings` (the model's defaults: zoomed models
    have their own). Yields once per embedding and decoder batch; returns ``{leading:
    AutomaticResult}`` (the planes done when ``stop`` was set, the last one partly)."""
    avoid_triton_llvm_clash()
    from pasam_plugins.automatic import AutomaticSegmenter, default_settings

    seg = AutomaticSegmenter(slot.predictor, default_settings(slot.predictor.model, **settings))
    results = {}
    cancelled = (lambda: stop.is_set()) if stop is not None else None
    with slot.lock:
        slot.image_key = None  # the segmenter moves the predictor between windows
        for leading in planes:
            if stop is not None and stop.is_set():
                break
            plane = geometry.plane(data, leading, channel)
            results[tuple(leading)] = yield from seg.steps(plane, cancel=cancelled)
    return results


def segment_all_steps(slot: ModelSlot, settings: dict, plane_shape: tuple[int, int]) -> int:
    """Progress steps of :func:`segment_all_job` on one plane (imports torch: a worker's or
    a loaded model's caller)."""
    from pasam_plugins.automatic import AutomaticSegmenter, default_settings

    settings_ = default_settings(slot.predictor.model, **settings)
    return AutomaticSegmenter(slot.predictor, settings_).plan(*plane_shape)
