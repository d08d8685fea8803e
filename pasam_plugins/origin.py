"""Where a model came from, as data: :class:`ModelOrigin` (``model.origin``).

Set by :func:`pasam_plugins.checkpoint.load_model` and by fine-tuning; every front end reads
it (untrained warning, zoomed use, what a fine-tuned file may name as its base) instead of
probing attributes.
"""

from dataclasses import dataclass, field, replace
from typing import Any

#: how the weights were obtained
KINDS = (
    "built",
    "official-sam",
    "official-pasam",
    "official-hq-sam",
    "pasam-full",
    "pasam-adapter",
    "finetuned",
)


@dataclass(frozen=True)
class ModelOrigin:
    """Provenance of a :class:`pasam_plugins.modeling.PASam`.

    Attributes:
      kind: one of :data:`KINDS` (``built``: made in memory, e.g. random weights).
      file: the checkpoint file loaded (None for models built in memory).
      base_file: the complete checkpoint an adapter file was loaded on (the SAM of an
        official PA-SAM decoder file, the base of this project's adapter file), else None.
      variant, guide_mode, has_adapter: the architecture.
      family: ``"pasam"`` (SAM, with or without the PA-SAM adapter) or ``"hq-sam"``.
      plm: whether the model has a prompt learning module (:mod:`.prompt_learning`).
      untrained: random weights (``pasam make-test-checkpoint``); results are meaningless.
      metadata: this project's checkpoint metadata (``{}`` for official files), with the
        training provenance and the ``zoom`` settings of models used zoomed in.
    """

    kind: str = "built"
    file: str | None = None
    base_file: str | None = None
    variant: str = "custom"
    guide_mode: str = "reference"
    has_adapter: bool = False
    untrained: bool = False
    family: str = "pasam"
    plm: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def complete_base(self) -> str | None:
        """A whole-model file that an adapter-only save of this model (or of a fine-tuned
        copy) can name as its base: the file itself when it holds the whole model, the base
        of an adapter file; None for models built in memory or assembled from a decoder
        file plus a separate SAM (those are saved whole)."""
        if self.kind in ("official-sam", "official-hq-sam", "pasam-full"):
            return self.file
        if self.kind == "official-pasam":  # merged file: complete; decoder file: not
            return self.file if self.base_file is None else None
        if self.kind in ("pasam-adapter", "finetuned"):
            return self.base_file
        return None

    @property
    def zoom(self) -> dict[str, Any] | None:
        """The zoom settings of a model trained zoomed in (None: whole-image use)."""
        z = self.metadata.get("zoom")
        return z if isinstance(z, dict) else None

    def describe(self) -> str:
        """One line for logs and panels."""
        what = {
            "built": "built in memory",
            "official-sam": "official SAM",
            "official-pasam": "official PA-SAM",
            "official-hq-sam": "official HQ-SAM",
            "pasam-full": "pasam-plugins model",
            "pasam-adapter": "pasam-plugins adapter",
            "finetuned": "fine-tuned adapter",
        }.get(self.kind, self.kind)
        parts = [f"{what} {self.variant}", self.architecture()]
        if self.file:
            parts.append(self.file)
        if self.untrained:
            parts.append("UNTRAINED random weights")
        return ", ".join(parts)

    def architecture(self) -> str:
        """What the network is, and what its predictions carry, in words."""
        if self.family == "hq-sam":
            text = "HQ-SAM (HQ output token; no uncertainty map or mined points)"
        elif self.has_adapter:
            text = "SAM + PA-SAM adapter"
        else:
            text = "SAM only (no uncertainty map or mined points)"
        if self.plm:
            text += " + prompt learning module"
        return text

    def derived(self, **changes: Any) -> "ModelOrigin":
        """A copy with some fields changed."""
        return replace(self, **changes)
