"""``PASamPredictor``: ``SamPredictor``'s interface plus PA-SAM's uncertainty and mined points."""

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor
from torch.nn import functional as F

from .cache import CacheEntry, EmbeddingCache, image_key
from .fast_encoder import FastImageEncoder
from .guide import guide_input
from .imageio import DEFAULT_PERCENTILES, check_image_size, normalize_image
from .modeling import DecoderOutput, PASam
from .precision import check_precision, resolve_precision
from .runtime import freed_memory_retained

logger = logging.getLogger(__name__)


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``), else the best
    available of cuda, mps, cpu. Raises ``ValueError`` for a device that is not available."""
    if preferred not in (None, "", "auto"):
        dev = torch.device(preferred)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {preferred!r} was asked for, but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {preferred!r} was asked for, but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_signature(model: PASam) -> str:
    """A short hash identifying the weights that determine embeddings and guides.

    Hashes names, shapes and a strided sample (<= 4096 values) of every tensor of the image
    encoder and the pixel statistics, every value of the (small) guiding conv, and the guide
    mode. Cheap even for ViT-H, and different for any two trained models.
    """
    h = hashlib.sha256()
    family = getattr(model, "family", "pasam")
    head = f"{model.variant}|{model.guide_mode}|{model.has_adapter}"
    h.update((head if family == "pasam" else f"{head}|{family}").encode())
    guide_modules = model.guide_modules()
    modules = [("image_encoder", model.image_encoder), *guide_modules]
    full_prefixes = tuple(f"{name}." for name, _ in guide_modules)
    tensors: list[tuple[str, Tensor]] = [
        ("pixel_mean", model.pixel_mean),
        ("pixel_std", model.pixel_std),
    ]
    for prefix, module in modules:
        tensors += [(f"{prefix}.{k}", v) for k, v in module.state_dict().items()]
    with torch.no_grad():
        for name, t in tensors:
            flat = t.detach().reshape(-1)
            # the guide's modules (PA-SAM's guiding conv, HQ-SAM's fusion layers) are what
            # fine-tuning changes: hash all of them
            full = name.startswith(full_prefixes)
            step = 1 if full else max(1, flat.numel() // 4096)
            sample = flat[::step].float().cpu().numpy()
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


@dataclass
class Prediction:
    """One prompt set's result, in the original image frame.

    Unpacks like ``SamPredictor.predict``: ``masks, scores, low_res_logits = prediction``.

    Attributes:
      masks: CxHxW bool (or float logits with ``return_logits``).
      scores: C float32 predicted IoU.
      low_res_logits: Cx256x256 float32, usable as ``mask_input`` of the next call.
      uncertainty: HxW float32 in [0, 1] (None without adapter: SAM and HQ-SAM have none).
      mined_points: 8x2 float32 (x, y) pixels, 4 positive then 4 negative (None without adapter).
      mined_labels: 8 int64, 1 positive / 0 negative.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    uncertainty: np.ndarray | None = None
    mined_points: np.ndarray | None = None
    mined_labels: np.ndarray | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.masks, self.scores, self.low_res_logits))


@dataclass
class BatchPrediction:
    """B prompt sets' results as tensors: masks BxCxHxW, scores BxC, low_res_logits
    BxCx256x256, uncertainty BxHxW, mined_points Bx8x2 (x, y image pixels), mined_labels Bx8.
    The decoder's raw output (64x64 maps, for training and debugging) is in ``decoder``."""

    masks: Tensor
    scores: Tensor
    low_res_logits: Tensor
    uncertainty: Tensor | None
    mined_points: Tensor | None
    mined_labels: Tensor | None
    decoder: DecoderOutput

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.masks, self.scores, self.low_res_logits))

    def item(self, i: int) -> Prediction:
        """The i-th prompt set as a numpy :class:`Prediction`."""

        def np_(t: Tensor | None) -> np.ndarray | None:
            return None if t is None else t[i].detach().cpu().numpy()

        return Prediction(
            masks=np_(self.masks),  # type: ignore[arg-type]
            scores=np_(self.scores),  # type: ignore[arg-type]
            low_res_logits=np_(self.low_res_logits),  # type: ignore[arg-type]
            uncertainty=np_(self.uncertainty),
            mined_points=np_(self.mined_points),
            mined_labels=np_(self.mined_labels),
        )


def _cat_outputs(outs: list[DecoderOutput]) -> DecoderOutput:
    """The decoder outputs of consecutive groups of prompt sets as one."""

    def cat(ts: list) -> Tensor | None:
        return None if ts[0] is None else torch.cat(ts)

    return DecoderOutput(
        **{f.name: cat([getattr(o, f.name) for o in outs]) for f in fields(DecoderOutput)}
    )


class PASamPredictor:
    """Computes the image embedding and guide once, then predicts masks for prompts.

    Arguments:
      model (PASam): the network (with or without adapter).
      device (str or None): ``cuda``/``mps``/``cpu``; default: the best available.
      cache (EmbeddingCache or None): shared embedding cache; default: a private 512 MiB one.
      precision (str): the image encoder's number format: ``"float32"`` (default),
        ``"bf16"`` (bf16 autocast; CPU and CUDA) or ``"auto"`` (bf16 where this device
        computes it fast, see :mod:`pasam_plugins.precision`). Embeddings are cached per
        precision: a bf16 embedding is never served to a float32 predictor, or vice versa.
      fast_encoder (bool): run the encoder through :class:`~pasam_plugins.fast_encoder.
        FastImageEncoder` (fused attention, same weights, same function to float32
        rounding). False (default): SAM's own modules, the float32 reference.
      compile_encoder (bool): also compile the fast encoder with ``torch.compile``, in a
        background thread (see :meth:`start_compile`); until it is ready, the eager fast
        encoder serves every image, so the first click never waits for it.
      decoder_precision (str or None): ``"float32"`` or ``"bf16"`` for prompt encoder and
        mask decoder; default bf16 on CUDA when the encoder runs in bf16, else float32 (on
        CPU a bf16 decoder call measures slower than float32).
      autocast_bf16 (bool): the older spelling of ``precision="bf16",
        decoder_precision="bf16"``.
      percentiles (tuple): contrast percentiles for non-uint8 images.

    The front ends (``pasam predict``, the Label Studio backend, napari) use
    ``precision="auto", fast_encoder=True``.
    """

    def __init__(
        self,
        model: PASam,
        *,
        device: str | torch.device | None = None,
        cache: EmbeddingCache | None = None,
        precision: str = "float32",
        fast_encoder: bool = False,
        compile_encoder: bool = False,
        decoder_precision: str | None = None,
        autocast_bf16: bool = False,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ) -> None:
        self._device = select_device(device)
        self.model = model.to(self._device).eval()
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.cache = cache if cache is not None else EmbeddingCache(max_bytes=512 << 20)
        if autocast_bf16:
            precision = "bf16"
            decoder_precision = decoder_precision or "bf16"
        #: what was asked for (``auto``, ``float32``, ``bf16``)
        self.requested_precision = check_precision(precision)
        #: what the encoder runs in here: ``float32`` or ``bf16``
        self.precision = resolve_precision(self.requested_precision, self._device)
        if decoder_precision is None:
            bf16_dec = self.precision == "bf16" and self._device.type == "cuda"
            decoder_precision = "bf16" if bf16_dec else "float32"
        self.decoder_precision = check_precision(decoder_precision)
        if self.decoder_precision == "auto":
            raise ValueError("decoder_precision is float32 or bf16")
        if self.decoder_precision == "bf16":
            resolve_precision("bf16", self._device)  # raises on devices without bf16 autocast
        #: HQ-SAM's encoder also returns early features: it runs as it is (no fast path)
        self._own_encoder = type(self.model).encode_image is not PASam.encode_image
        self.fast_encoder = bool(fast_encoder or compile_encoder) and not self._own_encoder
        self.percentiles = percentiles
        #: hash of the weights that determine embeddings and guides
        self.model_signature = model_signature(self.model)
        #: the weights and the encoder precision: part of every embedding cache key
        self.embedding_signature = self.model_signature + (
            "-bf16" if self.precision == "bf16" else ""
        )
        self._encoder: torch.nn.Module = (
            FastImageEncoder(self.model.image_encoder)
            if self.fast_encoder
            else self.model.image_encoder
        )
        self._compiled: torch.nn.Module | None = None
        #: ``off``, ``compiling``, ``ready`` or ``failed: <reason>``
        self.compile_state = "off"
        self._compile_thread: threading.Thread | None = None
        self._compile_requested = False
        self.encoder_runs = 0
        self.reset_image()
        if compile_encoder:
            self.start_compile()

    # ------------------------------------------------------------------ image
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def autocast_bf16(self) -> bool:
        """Whether the encoder runs under bf16 autocast (``precision == "bf16"``)."""
        return self.precision == "bf16"

    def settings(self) -> dict:
        """Keyword arguments that give a predictor for another model (a fine-tuned one) the
        same device, cache and precision settings as this one."""
        return {
            "device": self._device,
            "cache": self.cache,
            "precision": self.requested_precision,
            "fast_encoder": self.fast_encoder,
            "compile_encoder": self._compile_requested,
            "decoder_precision": self.decoder_precision,
            "percentiles": self.percentiles,
        }

    def _encoder_autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _autocast(self):
        if self.decoder_precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return nullcontext()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """1x3xSxS preprocessed input -> (1xCxGxG float32 embedding, early encoder features
        or None), in this predictor's precision, through the compiled encoder once it is
        ready. Models with an encoder of their own (HQ-SAM: its early features feed the HQ
        head) run it as it is."""
        if self._own_encoder:
            with torch.no_grad(), self._encoder_autocast():
                features, early = self.model.encode_image(x)
            return features.float(), early
        encoder = self._compiled if self._compiled is not None else self._encoder
        with torch.no_grad(), self._encoder_autocast():
            return encoder(x).float(), None

    # ------------------------------------------------------------------ compile
    def start_compile(
        self, *, backend: str = "inductor", mode: str | None = None, background: bool = True
    ) -> threading.Thread | None:
        """Compile the fast encoder with ``torch.compile`` and warm it up on a blank image.

        In the background (default) the eager encoder keeps serving images meanwhile and the
        compiled one takes over when its warm-up has run; a failure is logged and leaves the
        eager encoder in place (:attr:`compile_state` says which). Inductor's compiled
        kernels are kept in ``$TORCHINDUCTOR_CACHE_DIR`` (default: ``inductor/`` in pasam's
        cache directory), so later runs compile faster.

        Returns:
          threading.Thread or None: the compiling thread (None when run in the foreground).
        """
        if self._compile_thread is not None and self._compile_thread.is_alive():
            return self._compile_thread
        self._compile_requested = True
        if self._own_encoder:
            self.compile_state = "off (this model's encoder has no fast path)"
            return None
        if not self.fast_encoder:
            self.fast_encoder = True
            self._encoder = FastImageEncoder(self.model.image_encoder)
        if backend == "inductor" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            from .paths import cache_dir

            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
        self.compile_state = "compiling"
        encoder = self._encoder
        size = self.model.image_encoder.img_size

        def work() -> None:
            try:
                compiled = torch.compile(encoder, backend=backend, mode=mode, dynamic=False)
                x = torch.zeros(1, 3, size, size, device=self._device)
                with torch.no_grad(), self._encoder_autocast():
                    compiled(x)
            except Exception as exc:  # noqa: BLE001 - compiling is optional
                self.compile_state = f"failed: {type(exc).__name__}: {exc}"
                logger.warning("torch.compile of the image encoder failed: %s", exc)
                return
            self._compiled = compiled
            self.compile_state = "ready"
            logger.info("compiled image encoder ready (%s)", backend)

        if not background:
            work()
            return None
        self._compile_thread = threading.Thread(target=work, name="pasam-compile", daemon=True)
        self._compile_thread.start()
        return self._compile_thread

    def reset_image(self) -> None:
        """Forget the current image (the cache keeps its entry)."""
        self.is_image_set = False
        self.features: Tensor | None = None
        self.guide: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image_key: str | None = None

    def set_image(
        self, image: np.ndarray, image_format: str = "RGB", *, channel: int | None = None
    ) -> None:
        """Embed an image (or take its embedding from the cache).

        Arguments:
          image (np.ndarray): HxW, HxWx3, HxWx4 or HxWxC; uint8, uint16, int or float
            (normalized by :func:`pasam_plugins.imageio.normalize_image`).
          image_format (str): ``"RGB"`` or ``"BGR"`` for 3-channel images.
          channel (int or None): channel to segment in a multichannel image.

        Raises:
          ImageError: (a ValueError) the image cannot be normalized, or is too elongated for
            the model input (:meth:`check_image_size`).

        A disk-cached embedding is used only when it fits this model and image (shapes,
        image size; :meth:`_entry_problem`), else it is deleted and recomputed.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        rgb = normalize_image(image, channel=channel, percentiles=self.percentiles)
        if image_format != self.model.image_format:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self.check_image_size(*rgb.shape[:2])
        key = f"{image_key(rgb)}-{self.embedding_signature}"
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        entry = self.cache.get(key, validate=lambda e: self._entry_problem(e, size))
        if entry is not None:
            self._use_entry(key, entry)
            return
        input_image = self.transform.apply_image(rgb)
        input_t = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1)[None]
        self.set_torch_image(input_t.contiguous(), rgb.shape[:2])
        self.image_key = key
        self.cache.put(key, self._entry())

    def check_image_size(self, height: int, width: int, *, name: str = "") -> None:
        """Raise :class:`pasam_plugins.imageio.ImageError` (a ValueError) for an image the
        model input cannot hold: resizing its long side to the input size must leave the
        short side at least one pixel (aspect ratio at most 2048:1 for 1024-px models)."""
        check_image_size(height, width, target_length=self.transform.target_length, name=name)

    def _entry_problem(self, entry: CacheEntry, original_size: tuple[int, int]) -> str | None:
        """Why a cached entry read from disk cannot be this model's embedding of an image of
        ``original_size``, or None when it fits."""
        grid = self.model.embedding_grid
        expected = (1, int(self.model.prompt_encoder.embed_dim), grid, grid)
        if tuple(entry.embedding.shape) != expected:
            return f"embedding shape {tuple(entry.embedding.shape)}, the model makes {expected}"
        if self.model.uses_guide:
            guide_shape = tuple(self.model.guide_shape)
            if entry.guide is None:
                return "no guide, but the model needs one (PA-SAM adapter or HQ-SAM)"
            if tuple(entry.guide.shape) != guide_shape:
                return f"guide shape {tuple(entry.guide.shape)}, the model makes {guide_shape}"
        elif entry.guide is not None:
            return "a guide, but the model uses none"
        if tuple(entry.original_size) != tuple(original_size):
            return f"image size {tuple(entry.original_size)}, the image is {tuple(original_size)}"
        target = self.transform.target_length
        input_size = self.transform.get_preprocess_shape(*original_size, target)
        if tuple(entry.input_size) != tuple(input_size):
            return f"input size {tuple(entry.input_size)}, expected {tuple(input_size)}"
        return None

    def _entry(self) -> CacheEntry:
        assert self.features is not None and self.original_size and self.input_size
        return CacheEntry(self.features, self.guide, self.original_size, self.input_size)

    def _use_entry(self, key: str, entry: CacheEntry) -> None:
        entry = entry.to(self.device)
        self.features = entry.embedding
        self.guide = entry.guide
        self.original_size = tuple(entry.original_size)  # type: ignore[assignment]
        self.input_size = tuple(entry.input_size)  # type: ignore[assignment]
        self.image_key = key
        self.is_image_set = True

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Embed an image already resized with ``ResizeLongestSide`` (1x3xhxw, values 0..255).

        Always runs the encoder (no cache lookup), like ``SamPredictor.set_torch_image``.
        """
        img_size = self.model.image_encoder.img_size
        if not (
            transformed_image.ndim == 4
            and transformed_image.shape[:2] == (1, 3)
            and max(*transformed_image.shape[2:]) == img_size
        ):
            raise ValueError(
                f"set_torch_image input must be 1x3xHxW with long side {img_size}, "
                f"got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        x = self.model.preprocess(transformed_image.to(self.device).float())
        self.features, early = self.encode(x)
        self.encoder_runs += 1
        if self.model.uses_guide:
            # float32 in every precision: the guide is a small conv, and its input (Canny
            # edges) does not depend on the encoder
            resized_u8 = None
            if self.model.has_adapter and self.model.guide_mode == "image":
                resized_u8 = (
                    transformed_image[0].permute(1, 2, 0).round().clamp(0, 255).byte().cpu().numpy()
                )
            gin = self.model.guide_input(x, resized_u8, None if early is None else early.float())
            self.guide = self.model.encode_guide(gin, self.features)
        self.is_image_set = True

    def set_embedding(
        self,
        embedding: Tensor,
        original_size: tuple[int, int],
        *,
        image: np.ndarray | None = None,
        guide: Tensor | None = None,
    ) -> None:
        """Use a precomputed 1xCx64x64 embedding. With the adapter, give either the guide
        (1xCx64x64) or the HxWx3 uint8 image it is computed from. HQ-SAM needs the guide (its
        HQ features come from the encoder's early features, which an embedding lacks)."""
        self.check_image_size(int(original_size[0]), int(original_size[1]))
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = self.transform.get_preprocess_shape(
            *self.original_size, self.transform.target_length
        )
        self.features = embedding.to(self.device).float()
        if self.model.uses_guide and not self.model.has_adapter:
            if guide is None:
                raise ValueError(
                    f"{self.model.method_name} needs its per-image features (guide=) with a "
                    "precomputed embedding; use set_image otherwise"
                )
            self.guide = guide.to(self.device)
        elif self.model.has_adapter:
            if guide is None:
                if image is None:
                    raise ValueError("the adapter needs the guide or the image it comes from")
                resized = self.transform.apply_image(np.ascontiguousarray(image))
                t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
                with torch.no_grad():
                    gin = guide_input(self.model.guide_mode, self.model.preprocess(t), resized)
                    guide = self.model.mask_decoder.encode_guide(gin)
            self.guide = guide.to(self.device)
        self.is_image_set = True

    def get_image_embedding(self) -> Tensor:
        """1xCx64x64 embedding of the current image."""
        if not self.is_image_set or self.features is None:
            raise RuntimeError(
                "An image must be set with .set_image(...) to generate an embedding."
            )
        return self.features

    # ------------------------------------------------------------------ prompts
    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """Predict one object from prompts in original-image pixels (as ``SamPredictor``).

        Arguments:
          point_coords (np.ndarray): Nx2 (x, y); point_labels (np.ndarray): N, 1 fg / 0 bg.
          box (np.ndarray): 4 (x0, y0, x1, y1). mask_input (np.ndarray): 1x256x256 logits.
          multimask_output (bool): SAM: 3 masks; with the adapter: the best of masks 1..3.

        Returns:
          Prediction: unpacks to ``masks, scores, low_res_logits``.
        """
        self._require_image()
        assert self.original_size is not None
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            pc = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
            pl = np.asarray(point_labels).reshape(-1)
            if len(pc) != len(pl):
                raise ValueError(f"{len(pc)} point coordinates but {len(pl)} labels")
            pc = self.transform.apply_coords(pc, self.original_size)
            coords_t = torch.as_tensor(pc, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(pl, dtype=torch.int, device=self.device)[None]
        if box is not None:
            b = self.transform.apply_boxes(
                np.asarray(box, dtype=np.float64).reshape(1, 4), self.original_size
            )
            box_t = torch.as_tensor(b, dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        out = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits=return_logits
        )
        return out.item(0)

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        use_adapter: bool = True,
    ) -> BatchPrediction:
        """Predict B objects in one call; prompts already in the 1024-px input frame.

        Arguments:
          point_coords (Tensor): BxNx2; point_labels (Tensor): BxN.
          boxes (Tensor): Bx4. mask_input (Tensor): Bx1x256x256.
          use_adapter (bool): False gives plain SAM's output from the same weights.

        Returns:
          BatchPrediction: masks BxCxHxW, scores BxC, low_res_logits BxCx256x256,
            uncertainty BxHxW, mined_points Bx8x2, mined_labels Bx8.

        Under glibc's default allocator settings on a CPU the sets are decoded in passes of
        a few (:meth:`_sets_per_pass`); the answer is the same.
        """
        self._require_image()
        assert self.original_size is not None and self.input_size is not None
        n = next((len(t) for t in (boxes, point_coords, mask_input) if t is not None), 1)
        k = self._sets_per_pass(n, multimask_output)

        def part(t: Tensor | None, i: int) -> Tensor | None:
            return t if t is None or k >= n else t[i : i + k]

        points = (point_coords, point_labels) if point_coords is not None else None
        outs = []
        for i in range(0, n, k):
            with self._autocast():
                outs.append(
                    self.model.decode(
                        self.features,
                        guide=self.guide,
                        points=None if points is None else (part(points[0], i), part(points[1], i)),
                        boxes=part(boxes, i),
                        mask_input=part(mask_input, i),
                        multimask_output=multimask_output,
                        use_adapter=use_adapter,
                    )
                )
        out = outs[0] if len(outs) == 1 else _cat_outputs(outs)
        low_res = out.masks.float()
        iou = out.iou_predictions.float()
        if out.uncertainty is not None and not multimask_output:
            iou = iou[:, :1]  # the official single-mask output carries all 4 IoU predictions
        threshold = None if return_logits else self.model.mask_threshold
        masks = self._full_size(low_res, k, threshold=threshold)
        unc = pts = lbl = None
        if out.uncertainty is not None:
            unc = self._full_size(out.uncertainty.float(), k, clamp=True)[:, 0]
            if out.mined_indices is not None:
                pts, lbl = self._mined_to_pixels(out.mined_indices)
        return BatchPrediction(masks, iou, low_res, unc, pts, lbl, out)

    def _sets_per_pass(self, n: int, multimask_output: bool) -> int:
        """How many of ``n`` prompt sets one decoder pass (and one full-size upsampling) takes:
        all of them, except on a CPU whose C library unmaps large freed blocks (glibc's
        defaults, unless :func:`~pasam_plugins.runtime.retain_freed_memory` ran). There a
        pass takes only as many sets as keep its largest temporaries (per set: the
        image-side tokens, GxG x C, and the masks at the padded input size, float32) under
        16 MiB, half the 32 MiB above which glibc maps every block afresh and faults it in
        page by page on each call; the full-size results are written into one output.
        Measured (1024x1024, ViT-B random weights, 16 box sets, one thread, glibc's
        defaults): one pass 448 MiB of page faults per call and 0.975 s CPU, passes of 4
        sets none and 0.838 s (without the outputs), 16 single calls 1.033 s."""
        if n <= 1 or self.device.type != "cpu" or freed_memory_retained():
            return n
        assert self.features is not None and self.original_size is not None
        c, g = self.features.shape[1], self.features.shape[-1]
        img = self.model.image_encoder.img_size
        h, w = self.original_size
        masks = 3 if multimask_output else 1
        per_set = 4 * max(g * g * c, masks * img * img, masks * h * w)
        return max(1, min(n, (16 << 20) // per_set))

    def _full_size(
        self, maps: Tensor, k: int, *, threshold: float | None = None, clamp: bool = False
    ) -> Tensor:
        """:meth:`_upsample` of ``maps``, thresholded (``maps > threshold``) or clamped to
        [0, 1], ``k`` sets at a time into one output (the temporaries stay small)."""

        def finish(x: Tensor, out: Tensor | None = None) -> Tensor:
            if threshold is not None:
                return torch.gt(x, threshold, out=out) if out is not None else x > threshold
            if clamp:
                return torch.clamp(x, 0.0, 1.0, out=out) if out is not None else x.clamp_(0.0, 1.0)
            if out is not None:
                out.copy_(x)
            return x

        n = len(maps)
        if k >= n:
            return finish(self._upsample(maps))
        first = self._upsample(maps[:k])
        dtype = torch.bool if threshold is not None else first.dtype
        result = torch.empty((n, *first.shape[1:]), dtype=dtype, device=first.device)
        finish(first, result[:k])
        for i in range(k, n, k):
            finish(self._upsample(maps[i : i + k]), result[i : i + k])
        return result

    def _upsample(self, maps: Tensor) -> Tensor:
        """BxCxhxw (256x256 logits, 64x64 maps) -> BxCxHxW in the original image frame.

        SAM's ``postprocess_masks``: bilinear to the padded 1024 frame, crop the padding,
        bilinear to the original size; the last step is skipped when the sizes already
        agree (a same-size bilinear resample is the identity, and costs a full pass).
        """
        img = self.model.image_encoder.img_size
        x = F.interpolate(maps, (img, img), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        if tuple(self.input_size) != tuple(self.original_size):
            x = F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)
        return x

    def _mined_to_pixels(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Bx8 flat 64x64 cell indices -> Bx8x2 (x, y) pixels of the original image, clipped
        to the image, and Bx8 labels (4 positive, then 4 negative)."""
        grid = self.features.shape[-1]
        stride = self.model.image_encoder.img_size / grid
        i = torch.div(idx, grid, rounding_mode="floor").float()
        j = (idx % grid).float()
        h, w = self.original_size
        sy = h / self.input_size[0]
        sx = w / self.input_size[1]
        x = ((j + 0.5) * stride * sx).clamp(0, w - 1)
        y = ((i + 0.5) * stride * sy).clamp(0, h - 1)
        k = idx.shape[1] // 2
        labels = torch.cat(
            [torch.ones(k, dtype=torch.long), torch.zeros(idx.shape[1] - k, dtype=torch.long)]
        ).to(idx.device)
        return torch.stack([x, y], dim=-1), labels.expand(idx.shape[0], -1)
