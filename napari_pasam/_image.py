"""Which image is annotated: the self-updating layer picker, the layer's axes (inferred from
its metadata, shown in the panel), "Annotate this image" (reusing the image's annotation
layers), and the slice and channel under napari's sliders (the channel box and napari's
channel slider move together)."""

from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from . import _layers as lay
from .axes import SOURCE_CHOSEN, axes_for, infer_axes
from .jobs import PlaneRef
from .large import check_annotation_size, overview_of
from .planes import PlaneGeometry

#: ``start(channel_axis=AUTO)``: take the panel's choice (inferred from the layer by default)
AUTO = "auto"


class ImageMixin:
    """Image panel logic and slice/channel position for :class:`AnnotatorWidget`."""

    def _image_choices(self) -> list[Image]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and not lay.is_annotation_layer(layer)
        ]

    def _refresh_image_choices(self, event=None) -> None:
        if self.image_layer is not None and self.image_layer not in self.viewer.layers:
            self.stop_annotating()  # the image is gone (closed by the user, or the viewer)
        combo = self.image_panel.image_combo
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        for layer in self._image_choices():
            combo.addItem(layer.name)
            layer.events.name.disconnect(self._refresh_image_choices)
            layer.events.name.connect(self._refresh_image_choices)
        combo.setCurrentIndex(max(combo.findText(current), 0))
        combo.blockSignals(False)
        self._on_image_choice()

    def _chosen_image(self) -> Image | None:
        name = self.image_panel.image_combo.currentText()
        return next((la for la in self._image_choices() if la.name == name), None)

    def _on_image_choice(self, *_) -> None:
        """Show the chosen layer's axes (inferred from its metadata) and channel choices."""
        layer = self._chosen_image()
        combo = self.image_panel.channel_axis_combo
        combo.blockSignals(True)
        combo.clear()
        if layer is not None:
            shape = tuple(lay.level0(layer).shape)
            inferred = infer_axes(
                shape, rgb=bool(layer.rgb), axis_labels=layer.axis_labels, metadata=layer.metadata
            )
            where = "none" if inferred.channel_axis is None else f"axis {inferred.channel_axis}"
            combo.addItem(f"from the layer ({where})", AUTO)
            combo.addItem("none (grayscale / RGB)", None)
            if not layer.rgb and len(shape) >= 3:
                combo.addItem("axis 0 (channels first)", 0)
            combo.setEnabled(not layer.rgb)
        combo.blockSignals(False)
        self._on_axis_choice()

    def _axes_of(self, layer: Image, choice):
        shape = tuple(lay.level0(layer).shape)
        if choice == AUTO:
            return infer_axes(
                shape, rgb=bool(layer.rgb), axis_labels=layer.axis_labels, metadata=layer.metadata
            )
        return axes_for(shape, rgb=bool(layer.rgb), channel_axis=choice, source=SOURCE_CHOSEN)

    def _on_axis_choice(self, *_) -> None:
        layer = self._chosen_image()
        if layer is None:
            self.image_panel.axes_label.set_full_text("")
            return
        axes = self._axes_of(layer, self.image_panel.channel_axis_combo.currentData())
        text = axes.describe() + (f"\n⚠ {axes.hint}" if axes.hint else "")
        self.image_panel.axes_label.set_full_text(text)

    def start(self, layer: Image | None = None, *, channel_axis=AUTO) -> None:
        """Annotate ``layer`` (default: the chosen one): reuse its annotation layers when
        they exist (accepted objects stay), else create them. ``channel_axis``: AUTO takes
        the panel's choice (by default inferred from the layer), None or 0 set it."""
        layer = layer if layer is not None else self._chosen_image()
        if layer is None:
            show_error("PA-SAM: open an image first (File > Open, or File > Open Sample > PA-SAM)")
            return
        i = self.image_panel
        if i.image_combo.findText(layer.name) >= 0:
            i.image_combo.setCurrentIndex(i.image_combo.findText(layer.name))
        if channel_axis != AUTO:
            combo = i.channel_axis_combo
            choices = [combo.itemData(k) for k in range(combo.count())]
            if channel_axis not in choices:
                show_error(f"PA-SAM: channel axis {channel_axis} is not offered for {layer.name!r}")
                return
            combo.setCurrentIndex(choices.index(channel_axis))
        axes = self._axes_of(layer, i.channel_axis_combo.currentData())
        try:
            geometry = PlaneGeometry(
                tuple(lay.level0(layer).shape), rgb=bool(layer.rgb), channel_axis=axes.channel_axis
            )
            check_annotation_size(geometry)  # dense annotation layers: refuse what cannot fit
        except ValueError as exc:
            show_error(f"PA-SAM: cannot annotate layer {layer.name!r}: {exc}")
            return
        if self.current is not None:
            self.clear_prompts()
        self._disconnect_layers()
        found, misfits = lay.find_layers(self.viewer, layer, geometry)
        opacity = self.overlay_panel.opacity_slider.value() / 100
        self._suspend = True
        try:
            self.layers = lay.create_layers(layer, geometry, found=found, opacity=opacity)
            if self.layers.points not in self.viewer.layers:  # clicks work at once ...
                self.viewer.add_layer(self.layers.points)
        finally:
            self._suspend = False
        QTimer.singleShot(0, self._add_layers_stepwise)  # ... the other layers follow
        self.image_layer, self.geometry, self.axes = layer, geometry, axes
        self._connect_layers()
        if misfits:
            show_warning(
                f"PA-SAM: kept {', '.join(misfits)} as it is (it does not fit {layer.name!r} "
                f"read as {axes.describe()}); new layers were made"
            )
        i.channel_spin.blockSignals(True)
        i.channel_spin.setMaximum(max(geometry.num_channels - 1, 0))
        i.channel_spin.blockSignals(False)
        self._shown_plane = self._plane_position()
        self._sync_channel_spin()
        reused = "reusing its layers" if "labels" in found else "new layers"
        self.set_status(
            f"Annotating {layer.name!r} ({reused}): click points (N toggles positive/negative) "
            f"or draw a box; K accepts"
        )

    def _add_layers_stepwise(self) -> None:
        if self.layers is not None and lay.add_one_missing(self.viewer, self.layers):
            QTimer.singleShot(0, self._add_layers_stepwise)

    def stop_annotating(self) -> None:
        """Forget the annotated image (its layers stay in the viewer as they are). Closing
        the viewer comes here too (it removes the layers): a prefetch stops."""
        self.cancel_prefetch()
        if self.current is not None:
            self.emit("discard", object_id=self.current.object_id)
        self._pending_predict = False
        self._after_predict.clear()
        self._disconnect_layers()
        self.current = None
        self.image_layer = self.geometry = self.layers = self.objects = None
        self._shown_plane = None
        self.object_panel.object_label.setText("")
        self.set_status("The annotated image was closed; pick an image and press 'Annotate'")

    def _connect_layers(self) -> None:
        ls = self.layers
        ls.points.events.data.connect(self._on_prompt_event)
        ls.boxes.events.data.connect(self._on_prompt_event)
        self.connect_labels(ls.labels)
        self.set_point_polarity(self.object_panel.positive_radio.isChecked())
        ls.boxes.mode = "add_rectangle"  # ready to draw when the user selects it
        ls.points.mode = "add"
        self.viewer.layers.selection.active = ls.points
        self._apply_overlay_settings()

    def _disconnect_layers(self) -> None:
        if self.layers is None:
            return
        for layer in (self.layers.points, self.layers.boxes):
            layer.events.data.disconnect(self._on_prompt_event)
        self.disconnect_labels(self.layers.labels)

    def _apply_overlay_settings(self, *_) -> None:
        if self.layers is None:
            return
        v = self.overlay_panel
        self.layers.uncertainty.visible = v.show_uncertainty_check.isChecked()
        self.layers.uncertainty.opacity = v.opacity_slider.value() / 100
        self.layers.suggestions.visible = v.show_suggestions_check.isChecked()

    # ------------------------------------------------------------------ position
    def _data_position(self) -> list[float]:
        return list(self.image_layer.world_to_data(self.viewer.dims.point))

    def current_leading(self) -> tuple[int, ...]:
        """Slice indices (data coordinates of the spatial axes before Y, X) under the dims."""
        if self.image_layer is None or self.geometry is None:
            return ()
        pos = self._data_position()
        if self.geometry.channel_axis is not None:
            del pos[self.geometry.channel_axis]
        return self.geometry.clamp_index(pos[:-2])

    def current_channel(self) -> int | None:
        """The channel under napari's slider for the channel axis (None without one)."""
        g = self.geometry
        if self.image_layer is None or g is None or g.channel_axis is None:
            return None
        return g.clamp_channel(self._data_position()[g.channel_axis])

    def _plane_position(self) -> tuple:
        return (self.current_leading(), self.current_channel())

    def plane_ref(self, leading: tuple[int, ...], channel: int | None) -> PlaneRef:
        """The plane ``leading``/``channel`` of the annotated image for the jobs: level 0
        of a pyramid (read lazily for dask/zarr data), with a coarse level for contrast."""
        layer = self.image_layer
        overview = overview_of(layer.data, self.geometry) if layer.multiscale else None
        key = self.plane_key(leading, channel)
        return PlaneRef(lay.level0(layer), self.geometry, leading, channel, key, overview)

    def _sync_channel_spin(self) -> None:
        spin = self.image_panel.channel_spin
        channel = self.current_channel()
        spin.setEnabled(channel is not None)
        if channel is not None and spin.value() != channel:
            spin.blockSignals(True)
            spin.setValue(channel)
            spin.blockSignals(False)

    def _on_channel_spin(self, value: int) -> None:
        """The panel's channel box moves napari's slider (and so the annotated channel)."""
        g = self.geometry
        if g is None or g.channel_axis is None:
            return
        layer = self.image_layer
        axis = self.viewer.dims.ndim - layer.ndim + g.channel_axis
        world = value * layer.scale[g.channel_axis] + layer.translate[g.channel_axis]
        self.viewer.dims.set_point(axis, world)

    def _on_dims_change(self, event=None) -> None:
        if self.geometry is None:
            return
        position = self._plane_position()
        if position != self._shown_plane:
            self._shown_plane = position
            self._sync_channel_spin()
            self.clear_current()
            self.request_prediction()
