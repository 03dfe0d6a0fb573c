"""Pictures: VOC-palette label maps, overlays, the paper's Fig.-4 comparison, training curves
and the confusion matrix.

Figures are drawn with matplotlib's Agg backend (no screen needed) and written atomically as
PNG: to a temporary name in the target folder, then renamed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fcn_keras.constants import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE, check_palette
from fcn_keras.files import atomic_path

# --- Label maps as pictures --------------------------------------------------------------------


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """``labels`` as a 2-D integer array with values in 0..255, or a clear error."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] label map. Received: {name}.shape={labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices. Received: dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"{name} must hold values in 0..255 (255 = void). Received: range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return labels


def colorize(labels: np.ndarray, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Paints a label map in a palette, by default VOC's (void 255 in VOC's cream, (224, 224, 192)).

    Args:
        labels: integer (typically uint8) ``[H, W]`` class indices in 0..255.
        palette: uint8 ``[256, 3]``: the RGB colour of each label value (a dataset's own:
            ``fcn_keras.data.voc.LabelColours.palette``).

    Returns:
        uint8 ``[H, W, 3]`` RGB.
    """
    return check_palette(palette)[_check_labels(labels)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Blends the colourised labels over an image: ``round((1 - alpha) * image + alpha * colour)``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        labels: integer ``[H, W]`` class indices, the same ``H, W``.
        alpha: weight of the label colours, in [0, 1] (0 = the image, 1 = ``colorize(labels)``).
        palette: the label colours, uint8 ``[256, 3]`` (``colorize``).

    Returns:
        uint8 ``[H, W, 3]`` RGB.
    """
    image = np.asarray(image)
    colours = colorize(labels, palette)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an RGB [H, W, 3] array. Received: image.shape={image.shape}")
    if image.shape[:2] != colours.shape[:2]:
        raise ValueError(
            f"image and labels must have the same height and width. Received: image "
            f"{image.shape[:2]}, labels {colours.shape[:2]}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha!r}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def present_classes(label_maps: Sequence[np.ndarray]) -> list[int]:
    """Sorted class indices that occur in any of the label maps (255 = void included if present).

    Args:
        label_maps: integer ``[H, W]`` label maps (sizes may differ).

    Returns:
        Sorted ``list[int]``.
    """
    present: set[int] = set()
    for labels in label_maps:
        present.update(np.unique(_check_labels(labels)).tolist())
    return sorted(present)


def legend_handles(label_maps: np.ndarray | Sequence[np.ndarray], class_names: Sequence[str] = VOC_CLASSES):
    """Legend entries (palette colour + class name) for the classes present in the label maps.

    Args:
        label_maps: one integer ``[H, W]`` label map or a sequence of them.
        class_names: name of each class index; void (255) is named ``"void"``.

    Returns:
        ``list[matplotlib.patches.Patch]`` in class order, void last.

    Raises:
        ValueError: a label map holds a class index with no name in ``class_names``.
    """
    from matplotlib.patches import Patch

    if isinstance(label_maps, np.ndarray) and label_maps.ndim == 2:
        label_maps = [label_maps]
    handles = []
    for index in present_classes(label_maps):
        if index == IGNORE_LABEL:
            name = "void"
        elif index < len(class_names):
            name = class_names[index]
        else:
            raise ValueError(
                f"label maps hold class {index}, but class_names has only {len(class_names)} names"
            )
        handles.append(Patch(facecolor=VOC_PALETTE[index] / 255.0, edgecolor="black", linewidth=0.5, label=name))
    return handles


# --- Writing figures ---------------------------------------------------------------------------

#: Dots per inch of every figure: sizes are given in pixels and divided by this.
DPI = 100


def _new_figure(width_px: int, height_px: int):
    """A matplotlib Figure of exactly ``width_px x height_px`` pixels (Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def _save_png(figure, path: str | os.PathLike) -> Path:
    """Writes ``figure`` as a PNG to a temporary file beside ``path``, then renames it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    return Path(path)


def _axes_px(figure, left: float, top: float, width: float, height: float):
    """Axes at a rectangle given in pixels from the figure's top-left corner."""
    fig_w, fig_h = figure.get_size_inches() * DPI
    return figure.add_axes((left / fig_w, 1 - (top + height) / fig_h, width / fig_w, height / fig_h))


# --- Fig. 4: image | FCN-32s | FCN-16s | FCN-8s | ground truth ----------------------------------

#: Height in pixels of the column titles of ``plot_comparison`` and of one legend row.
TITLE_PX = 28
LEGEND_ROW_PX = 24
LEGEND_COLUMNS = 6  # at most; fewer where the figure is too narrow for them (legend_columns)


def legend_columns(handles: Sequence, width_px: int) -> int:
    """The most legend columns (1 to ``LEGEND_COLUMNS``) whose legend of ``handles`` at 9 pt is
    no wider than ``width_px``, as matplotlib lays it out (drawn on a scratch figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for ncol in range(min(LEGEND_COLUMNS, len(handles)), 1, -1):
        figure = _new_figure(width_px, LEGEND_ROW_PX)
        legend = figure.legend(handles=handles, ncol=ncol, fontsize=9, frameon=False)
        if legend.get_window_extent(FigureCanvasAgg(figure).get_renderer()).width <= width_px:
            return ncol
    return 1


def plot_comparison(
    images: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    ground_truth: Sequence[np.ndarray],
    path: str | os.PathLike,
    class_names: Sequence[str] = VOC_CLASSES,
    panel_px: int = 200,
) -> Path:
    """The paper's Fig. 4: one row per image, columns image | each model | ground truth.

    Label maps are painted in the VOC palette (nearest-neighbour, no blending) and a legend
    below names the classes present in any of them. The PNG is exactly
    ``(2 + len(predictions)) * panel_px`` pixels wide and
    ``TITLE_PX + len(images) * panel_px + LEGEND_ROW_PX * (ceil(n_legend / n_columns) + 1)``
    high, ``n_columns`` the legend's (``legend_columns``: up to 6, as many as the width holds);
    each image keeps its aspect ratio inside its square cell.

    Args:
        images: RGB uint8 ``[H_k, W_k, 3]`` images.
        predictions: column title (e.g. ``"FCN-32s"``) -> one uint8 ``[H_k, W_k]`` label map per
            image, in column order.
        ground_truth: uint8 ``[H_k, W_k]`` label maps (255 = void).
        path: PNG file to write.
        class_names: name of each class index, for the legend.
        panel_px: side of each square cell in pixels.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: the lists have different lengths, or a label map's size differs from its
            image's.
    """
    columns = [("image", list(images)), *((t, list(m)) for t, m in predictions.items()), ("ground truth", list(ground_truth))]
    if not columns[0][1]:
        raise ValueError("images is empty: plot_comparison needs at least one image")
    for title, maps in columns[1:]:
        if len(maps) != len(images):
            raise ValueError(f"column {title!r} has {len(maps)} label maps for {len(images)} images")
    label_maps = []
    for row, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images[{row}] must be RGB [H, W, 3]. Received: shape {image.shape}")
        for title, column in columns[1:]:
            labels = _check_labels(column[row], f"{title} label map {row}")
            if labels.shape != image.shape[:2]:
                raise ValueError(
                    f"{title} label map {row} has shape {labels.shape}, its image {image.shape[:2]}"
                )
            label_maps.append(labels)
    handles = legend_handles(label_maps, class_names)
    legend_ncol = legend_columns(handles, len(columns) * panel_px)
    legend_rows = -(-len(handles) // legend_ncol)
    grid_h = len(images) * panel_px
    figure = _new_figure(len(columns) * panel_px, TITLE_PX + grid_h + LEGEND_ROW_PX * (legend_rows + 1))
    for col, (title, column) in enumerate(columns):
        for row, picture in enumerate(column):
            axes = _axes_px(figure, col * panel_px + 2, TITLE_PX + row * panel_px + 2, panel_px - 4, panel_px - 4)
            shown = picture if col == 0 else colorize(picture)
            axes.imshow(shown, interpolation="nearest")
            axes.set_axis_off()
            if row == 0:
                axes.set_title(title, fontsize=11)
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=legend_ncol,
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _save_png(figure, path)


# --- Training curves from Keras CSVLogger files ------------------------------------------------

#: Columns of a Keras ``CSVLogger`` file that ``plot_training_curves`` reads.
REQUIRED_COLUMNS = ("epoch", "loss")
OPTIONAL_COLUMNS = ("mean_iu", "val_loss", "val_mean_iu")


#: How Keras' CSVLogger writes a value that was not logged.
_MISSING = ("NA", "")


def read_training_log(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a Keras ``CSVLogger`` file.

    A resumed run may log an epoch twice; the last row of each epoch wins.

    Args:
        csv_path: the CSV file (columns ``epoch``, ``loss`` and optionally ``mean_iu``,
            ``val_loss``, ``val_mean_iu``, others ignored).

    Returns:
        Column name -> float64 ``[E]`` array, in epoch order (``epoch`` as in the file, 0-based).

    Raises:
        FileNotFoundError: ``csv_path`` does not exist.
        ValueError: a required column is missing, the file has no rows, a row has another number
            of fields than the header, or a value is not a number (naming the file).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"training log {csv_path} does not exist")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in fields]
        if missing:
            raise ValueError(
                f"training log {csv_path} lacks the column(s) {missing}; it has {fields}. Expected a "
                f"Keras CSVLogger file with {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
            )
        by_epoch: dict[int, dict[str, str]] = {}
        for row in reader:
            if None in row or None in row.values():  # More fields than the header, or fewer (a torn line).
                count = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None, []))
                raise ValueError(f"training log {csv_path} line {reader.line_num} has {count} field{'s' * (count != 1)}, "
                                 f"its header {len(fields)} (a line cut short, or lines run together?)")
            try:
                by_epoch[int(float(row["epoch"]))] = row
            except (ValueError, OverflowError):  # OverflowError: "inf", "1e999".
                raise ValueError(f"training log {csv_path} line {reader.line_num}: epoch {row['epoch']!r} is not a "
                                 "number") from None
    if not by_epoch:
        raise ValueError(f"training log {csv_path} has a header but no rows")
    epochs = sorted(by_epoch)
    rows = [by_epoch[e] for e in epochs]
    # CSVLogger writes "NA" where a run logged no value (e.g. val_* without validation): an
    # optional column that is NA throughout is absent; a missing value elsewhere is NaN.
    columns = list(REQUIRED_COLUMNS) + [
        c for c in OPTIONAL_COLUMNS if c in fields and any(row[c] not in _MISSING for row in rows)
    ]
    try:
        return {
            c: np.array([np.nan if c in OPTIONAL_COLUMNS and row[c] in _MISSING else float(row[c]) for row in rows])
            for c in columns
        }
    except ValueError as error:
        raise ValueError(f"training log {csv_path} holds a value that is not a number: {error}") from None


def plot_training_curves(
    csv_paths: Mapping[str, str | os.PathLike], path: str | os.PathLike, size_px: tuple[int, int] = (1000, 400)
) -> Path:
    """Loss and mean IU per epoch for one or more runs (train solid, validation dashed).

    Args:
        csv_paths: run name (e.g. ``"FCN-32s"``) -> its Keras ``CSVLogger`` file.
        path: PNG file to write.
        size_px: ``(width, height)`` of the PNG in pixels.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError / FileNotFoundError: no run given, or a log is missing or lacks a column
            (see ``read_training_log``).
    """
    if not csv_paths:
        raise ValueError("csv_paths is empty: give at least one run name -> CSV file")
    from matplotlib.ticker import MaxNLocator

    logs = {name: read_training_log(csv) for name, csv in csv_paths.items()}
    figure = _new_figure(*size_px)
    loss_axes, iu_axes = figure.subplots(1, 2)
    colours = [f"C{i}" for i in range(len(logs))]
    for colour, (name, log) in zip(colours, logs.items()):
        epochs = log["epoch"] + 1
        for axes, metric in ((loss_axes, "loss"), (iu_axes, "mean_iu")):
            if metric in log:
                axes.plot(epochs, log[metric], "-o", color=colour, markersize=3, label=f"{name} train")
            if f"val_{metric}" in log:
                axes.plot(epochs, log[f"val_{metric}"], "--s", color=colour, markersize=3, label=f"{name} val")
    for axes, title in ((loss_axes, "loss"), (iu_axes, "mean IU")):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    return _save_png(figure, path)


# --- Confusion matrix --------------------------------------------------------------------------


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: row i is where the pixels of true class i went.

    Args:
        confusion: ``[C, C]`` counts, rows = truth.

    Returns:
        float64 ``[C, C]``; rows of classes absent from the truth are 0.
    """
    hist = np.asarray(confusion, dtype=np.float64)
    totals = hist.sum(axis=1, keepdims=True)
    return np.divide(hist, totals, out=np.zeros_like(hist), where=totals > 0)


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, size_px: int = 900
) -> Path:
    """The row-normalised confusion matrix (row i: where the pixels of class i went).

    Args:
        confusion: ``[C, C]`` counts, rows = truth, columns = prediction.
        class_names: ``C`` names.
        path: PNG file to write.
        size_px: side of the square PNG in pixels.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``confusion`` is not ``[C, C]`` with ``C == len(class_names)``.
    """
    hist = np.asarray(confusion, dtype=np.float64)
    if hist.ndim != 2 or hist.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion must be [C, C] with C = len(class_names) = {len(class_names)}. Received: "
            f"shape {hist.shape}"
        )
    normalised = row_normalised(hist)
    figure = _new_figure(size_px, size_px)
    axes = figure.add_subplot()
    shown = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=90, fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion matrix (rows normalised)")
    if len(class_names) <= 32:
        for i, j in zip(*np.nonzero(normalised >= 0.005)):
            value = normalised[i, j]
            axes.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6,
                      color="white" if value > 0.5 else "black")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return _save_png(figure, path)
