"""Propagation through a stack and fine-tuning, as long tasks of the annotator (worker,
progress in the dock, cancellable)."""

import threading

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from . import _layers as lay
from ._finetune import FinetuneRun, FinetuneStep, finetune_job, labelled_planes
from ._panels import ACCEPT_KEY
from .jobs import Failure, guarded, propagation_job
from .propagation import PropagationRule, PropagationStep, PropagationSummary


class LongTasksMixin:
    """Propagate and fine-tune for :class:`AnnotatorWidget`."""

    def _init_longtasks(self) -> None:
        self.last_propagation: list[PropagationStep] = []
        self.last_propagation_summary: PropagationSummary | None = None
        self._propagating = None
        self._propagation_atoms: list = []
        self._finetune_stop: threading.Event | None = None
        self.last_finetune_progress: list[FinetuneStep] = []
        self.last_finetune: FinetuneRun | None = None

    def cancel(self) -> None:
        """Cancel the running task: a propagation after the slice in progress, fine-tuning
        after the step in progress (keeping what it trained), a model load or embedding at
        once (its result is dropped). A background prefetch stops too."""
        self.cancel_prefetch()
        if not self.runner.cancel():
            return
        if self.runner.task is None:
            self.set_status("Cancelled")

    # ------------------------------------------------------------------ propagate
    def propagation_rule(self) -> PropagationRule:
        """The stop rule shown in the panel."""
        p = self.propagation_panel
        min_iou = p.min_iou_spin.value()
        return PropagationRule(
            min_iou=None if min_iou <= p.min_iou_spin.minimum() else min_iou,
            max_uncertainty=p.max_uncertainty_spin.value(),
            max_slices=p.max_slices_spin.value() or None,
        )

    def propagate(self) -> None:
        """Segment an object through the stack (Shift+S): the current object (accepted
        first) or else the last accepted one; a worker, cancellable, one undo step."""
        if self.runner.task is not None and self.runner.task.kind in ("predict", "embed"):
            self._after_predict.append(self.propagate)
            return
        if self._pending_predict:
            self._after_predict.append(self.propagate)
            return
        if self.runner.long_running:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if self.geometry is None or self.slot is None:
            show_warning("PA-SAM: load a model and annotate an image first")
            return
        if self.geometry.leading_ndim == 0:
            show_warning("PA-SAM: propagation needs a stack (3D or more); this image is 2D")
            return
        if self.current is not None and self.current.mask.any() and self.accept() is None:
            return
        obj = self.last_accepted
        labels = self.layers.labels.data
        if obj is None or not (labels[obj.leading] == obj.label_id).any():
            show_warning("PA-SAM: accept an object first, then propagate it")
            return
        rule = self.propagation_rule()
        n = self.geometry.num_slices - 1
        total = min(n, 2 * rule.max_slices) if rule.max_slices else n
        summary = PropagationSummary()
        self.last_propagation = []
        self.last_propagation_summary = summary
        self._propagating = (obj, summary, self.layers)
        self._propagation_atoms = []
        worker = create_worker(
            guarded,
            propagation_job,
            self.slot,
            lay.level0(self.image_layer),
            self.geometry,
            obj.leading,
            self.current_channel(),
            labels[obj.leading] == obj.label_id,
            rule,
            summary,
            self.plane_key((), None)[:2],
            _progress={"total": max(total, 1), "desc": f"PA-SAM: propagating {obj.label_id}"},
        )
        self.runner.start(
            worker,
            kind="propagate",
            title=f"Propagating object {obj.label_id}",
            total=max(total, 1),
            stop=worker.quit,
            on_yield=self._on_propagation_step,
            on_return=self._on_propagation_returned,
            on_finish=self._on_propagation_finished,
        )

    def _on_propagation_step(self, step: PropagationStep) -> None:
        self.last_propagation.append(step)
        obj, _, layers = self._propagating
        if not step.kept or layers is not self.layers:
            return
        leading = (*obj.leading[:-1], step.slice_index)
        atom, painted = self.paint_plane(leading, step.result.mask, obj.label_id)
        if atom is None:
            return
        self._propagation_atoms.append(atom)
        unc = None if step.result.result is None else step.result.result.uncertainty
        self.objects.record(obj.label_id, leading, step.result.mask, step.result.iou, unc)
        self.objects.invalidate([leading])
        self.layers.labels.refresh()

    def _on_propagation_returned(self, result) -> None:
        if isinstance(result, Failure):
            show_error(f"PA-SAM: propagation failed: {result.message}")

    def _on_propagation_finished(self) -> None:
        obj, summary, layers = self._propagating
        if self.runner.task is not None and self.runner.task.cancelled:
            summary.cancelled = True
        if self._propagation_atoms and layers is self.layers:
            self.write_labels(self._propagation_atoms)  # one undo step for the whole run
        self._propagation_atoms = []
        self.refresh_features()
        kept = sorted([obj.leading[-1], *(s.slice_index for s in self.last_propagation if s.kept)])
        names = {1: "up", -1: "down"}
        stops = ", ".join(f"{names[d]}: {r}" for d, r in summary.stops.items())
        msg = f"PA-SAM: object {obj.label_id} on slices {kept[0]}..{kept[-1]}"
        msg += " (cancelled)" if summary.cancelled else f" ({stops})"
        self.set_status(msg.removeprefix("PA-SAM: "))
        show_info(msg)

    # ------------------------------------------------------------------ fine-tune
    def finetune(self, steps: int | None = None, train: str | None = None) -> None:
        """Fine-tune what ``train`` names (default: the panel's 'Adapt' choice, e.g. the
        PA-SAM adapter or a prompt learning module) on the accepted objects (worker,
        progress in the dock, stoppable with :meth:`cancel`); the result becomes the model
        and is saved into :func:`pasam_plugins.paths.models_dir`."""
        if self.runner.busy:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if self.slot is None:
            show_error("PA-SAM: load a model first, then fine-tune it")
            return
        planes = []
        if self.layers is not None and self.geometry is not None:
            planes = labelled_planes(self.layers.labels.data, self.geometry.leading_ndim)
        if not planes:
            show_error(
                "PA-SAM: no accepted objects to train on: annotate an image and accept "
                f"objects ({ACCEPT_KEY}) into its labels layer first"
            )
            return
        steps = int(steps or self.finetune_panel.finetune_steps_spin.value())
        train = train or self.finetune_panel.adapt_combo.currentData() or "adapter"
        data = self.layers.labels.data
        labels = {p: np.array(data[p]) for p in planes}  # snapshot: the user may keep editing
        n_objects = sum(len(np.setdiff1d(np.unique(lab), [0])) for lab in labels.values())
        self._finetune_stop = threading.Event()
        self.last_finetune_progress = []
        worker = create_worker(
            guarded,
            finetune_job,
            self.slot,
            lay.level0(self.image_layer),
            self.geometry,
            labels,
            channel=self.current_channel(),
            steps=steps,
            image_name=self.image_layer.name,
            stop=self._finetune_stop,
            train=train,
            _progress={"total": steps, "desc": f"PA-SAM: fine-tuning ({train})"},
        )
        self.runner.start(
            worker,
            kind="finetune",
            title=f"Fine-tuning on {n_objects} objects in {len(planes)} planes ({train})",
            total=steps,
            stop=self._finetune_stop.set,
            on_yield=self._on_finetune_step,
            on_return=self._on_finetune_returned,
            on_finish=self._on_finetune_finished,
        )

    def _on_finetune_step(self, step: FinetuneStep) -> None:
        self.last_finetune_progress.append(step)
        if not self._finetune_stop or not self._finetune_stop.is_set():
            self.runner.progress(step.step)
            self.set_status(f"Fine-tuning: step {step.step}/{step.total}, loss {step.loss:.4f}")

    def _on_finetune_returned(self, result) -> None:
        if isinstance(result, Failure):
            self.set_status("Fine-tuning failed; the model is unchanged")
            show_error(f"PA-SAM: fine-tuning failed: {result.message}")
            return
        if result.slot is None:
            self.set_status("Fine-tuning stopped before the first step; the model is unchanged")
            show_info("PA-SAM: fine-tuning stopped before the first step; the model is unchanged")
            return
        self.last_finetune = result
        self.use_slot(result.slot)  # clears the old model's prediction, re-predicts
        self.set_status(f"Using the {result.describe()}")
        show_info(f"PA-SAM: {result.describe()}; saved to {result.path}")

    def _on_finetune_finished(self) -> None:
        self._finetune_stop = None
