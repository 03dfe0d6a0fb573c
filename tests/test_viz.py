"""fcn_keras.viz: palette colours, overlay arithmetic, legends, and the figures as real PNGs of
the documented pixel sizes showing the palette colours of the classes."""

import os

import numpy as np
import pytest
from PIL import Image

from fcn_keras import viz
from fcn_keras.constants import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.array(image.convert("RGB"))


def colours_in(picture: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, picture.reshape(-1, 3).tolist()))


C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # Matplotlib's first two cycle colours, "C0" and "C1".


def count_colour(picture: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """Pixels of exactly this colour."""
    return int((picture[..., :3] == rgb).all(axis=-1).sum())


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures the viz functions write, in order, to read what they drew."""
    figures = []
    save = viz._save_png

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(viz, "_save_png", keep)
    return figures


# --- colorize, overlay, legend -------------------------------------------------------------------


def test_colorize_gives_the_voc_palette_colour_of_every_index():
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    colours = viz.colorize(labels)
    assert colours.dtype == np.uint8 and colours.shape == (16, 16, 3)
    for index in range(256):
        np.testing.assert_array_equal(colours.reshape(-1, 3)[index], VOC_PALETTE[index])
    # The VOCdevkit colours, spelled out: background black, aeroplane (128, 0, 0), person
    # (192, 128, 128), void cream.
    assert tuple(viz.colorize(np.array([[0, 1, 15, IGNORE_LABEL]], np.uint8))[0].tolist()[3]) == (224, 224, 192)
    assert viz.colorize(np.array([[0, 1, 15]], np.int64))[0].tolist() == [[0, 0, 0], [128, 0, 0], [192, 128, 128]]


def test_colorize_rejects_non_label_maps():
    with pytest.raises(ValueError, match=r"2-D \[H, W\] label map"):
        viz.colorize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="integer class indices"):
        viz.colorize(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"values in 0..255"):
        viz.colorize(np.array([[0, 300]]))
    with pytest.raises(ValueError, match=r"values in 0..255 \(255 = void\). Received: range \[-1, 0\]"):
        viz.colorize(np.array([[0, -1]]))  # Not palette[-1], void's colour.


def test_colorize_in_another_palette():
    palette = np.random.default_rng(1).integers(0, 256, (256, 3)).astype(np.uint8)
    labels = np.array([[0, 1], [20, IGNORE_LABEL]], np.uint8)
    np.testing.assert_array_equal(viz.colorize(labels, palette), palette[labels])
    np.testing.assert_array_equal(viz.overlay(np.zeros((2, 2, 3), np.uint8), labels, 1.0, palette), palette[labels])
    for bad in (palette[:21], palette.astype(np.int64)):
        with pytest.raises(ValueError, match=r"palette must be uint8 \[256, 3\] \(a colour per label value\)"):
            viz.colorize(labels, bad)


def test_overlay_blends_image_and_palette_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    labels = rng.integers(0, 21, (7, 9)).astype(np.uint8)
    labels[0] = IGNORE_LABEL
    for alpha in (0.0, 0.3, 0.5, 1.0):
        blended = viz.overlay(image, labels, alpha)
        expected = np.rint((1 - alpha) * image + alpha * VOC_PALETTE[labels].astype(float))
        assert blended.dtype == np.uint8
        np.testing.assert_allclose(blended, expected, atol=1)  # float32 vs float64 rounding.
    np.testing.assert_array_equal(viz.overlay(image, labels, 0.0), image)
    np.testing.assert_array_equal(viz.overlay(image, labels, 1.0), VOC_PALETTE[labels])
    with pytest.raises(ValueError, match="same height and width"):
        viz.overlay(image, labels[:5])
    with pytest.raises(ValueError, match=r"same height and width. Received: image \(7, 9\), labels \(7, 5\)"):
        viz.overlay(image, labels[:, :5])
    for alpha in (1.5, -0.5):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            viz.overlay(image, labels, alpha)
    with pytest.raises(ValueError, match=r"image must be an RGB \[H, W, 3\] array. Received: image.shape=\(7, 9, 4\)"):
        viz.overlay(np.zeros((7, 9, 4), np.uint8), labels)
    # Rounded to the nearest, not truncated: 0.7 * 1 -> 1 and 0.5 * 3 -> 2 over background (black).
    background = np.zeros((1, 2), np.uint8)
    assert viz.overlay(np.full((1, 2, 3), 1, np.uint8), background, 0.3).tolist() == [[[1, 1, 1]] * 2]
    assert viz.overlay(np.full((1, 2, 3), 3, np.uint8), background, 0.5).tolist() == [[[2, 2, 2]] * 2]


def test_legend_names_the_classes_present_with_their_colours():
    a = np.array([[0, 15], [15, IGNORE_LABEL]], np.uint8)
    b = np.array([[8, 0]], np.uint8)
    handles = viz.legend_handles([a, b])
    assert [h.get_label() for h in handles] == ["background", "cat", "person", "void"]
    np.testing.assert_allclose(handles[2].get_facecolor()[:3], VOC_PALETTE[15] / 255.0)
    np.testing.assert_allclose(handles[3].get_facecolor()[:3], np.array([224, 224, 192]) / 255.0)  # Void's cream.
    for index in (5, 3):  # 3: one past the last name.
        with pytest.raises(ValueError, match=f"class {index}, but class_names has only 3 names"):
            viz.legend_handles(np.array([[index]], np.uint8), class_names=("a", "b", "c"))
    # As many legend columns as entries where they fit, at most LEGEND_COLUMNS.
    assert [viz.legend_columns(handles[:n], 2000) for n in (1, 2, 4)] == [1, 2, 4]
    assert viz.legend_columns(viz.legend_handles(np.arange(21, dtype=np.uint8)[None]), 2000) == viz.LEGEND_COLUMNS


# --- Figures ----------------------------------------------------------------------------------


def test_comparison_figure_size_layout_and_colours(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60, 80, 3)).astype(np.uint8), rng.integers(0, 256, (90, 50, 3)).astype(np.uint8)]
    truth = []
    for image in images:
        label = np.zeros(image.shape[:2], np.uint8)
        label[10:40, 10:40] = 15
        label[45:, :] = IGNORE_LABEL
        truth.append(label)
    predictions = {
        "FCN-32s": [np.where(t == IGNORE_LABEL, 0, t) for t in truth],
        "FCN-16s": [np.full(t.shape, 8, np.uint8) for t in truth],
        "FCN-8s": [np.where(t == IGNORE_LABEL, 12, t) for t in truth],
    }
    path = viz.plot_comparison(images, predictions, truth, tmp_path / "sub" / "fig4.png", panel_px=120)
    pixels = png_pixels(path)
    legend_entries = 5  # background, cat, dog, person, void
    rows = -(-legend_entries // viz.LEGEND_COLUMNS)
    assert pixels.shape[:2] == (viz.TITLE_PX + 2 * 120 + viz.LEGEND_ROW_PX * (rows + 1), 5 * 120)
    # Each class's palette colour is drawn exactly (nearest-neighbour painting).
    drawn = colours_in(pixels)
    for index in (15, 8, 12, IGNORE_LABEL):
        assert tuple(VOC_PALETTE[index].tolist()) in drawn, index
    # The FCN-16s column (the third, all dog) holds dog's colour and not person's.
    column = colours_in(pixels[viz.TITLE_PX : viz.TITLE_PX + 240, 2 * 120 + 10 : 3 * 120 - 10])
    assert tuple(VOC_PALETTE[12].tolist()) not in column and tuple(VOC_PALETTE[8].tolist()) in column
    assert not list(tmp_path.glob("sub/.*"))  # No temporary file left behind.
    with pytest.raises(ValueError, match="column 'FCN-8s' has 1 label maps for 2 images"):
        viz.plot_comparison(images, {"FCN-8s": truth[:1]}, truth, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="column 'ground truth' has 0 label maps"):
        viz.plot_comparison(images, {}, [], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="ground truth label map 1 has shape"):
        viz.plot_comparison(images, {}, [truth[0], truth[0]], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="images is empty: plot_comparison needs at least one image"):
        viz.plot_comparison([], {"FCN-8s": []}, [], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"images\[1\] must be RGB \[H, W, 3\]. Received: shape \(90, 50\)"):
        viz.plot_comparison([images[0], images[1][..., 0]], {}, truth, tmp_path / "bad.png")  # Not drawn in viridis.
    assert not (tmp_path / "bad.png").exists()


def test_each_comparison_cell_shows_its_own_picture_unblended(tmp_path):
    """Cell (row, column) holds exactly the colours of its picture (the image's, or the palette
    colours of its label map, nearest-neighbour: no blend where two classes meet) and white, in
    its row and column; the titles are above the first row only."""
    images = [np.full((30, 30, 3), (10, 200, 30), np.uint8), np.full((30, 30, 3), (200, 10, 250), np.uint8)]

    def halves(left: int, right: int) -> np.ndarray:
        labels = np.full((30, 30), left, np.uint8)
        labels[:, 15:] = right
        return labels

    predictions = {"A": [halves(1, 2), halves(3, 4)], "B": [halves(5, 6), halves(7, 8)]}
    truth = [halves(9, IGNORE_LABEL), halves(10, 11)]
    panel = 80
    pixels = png_pixels(viz.plot_comparison(images, predictions, truth, tmp_path / "fig.png", panel_px=panel))
    columns = [[{tuple(image[0, 0].tolist())} for image in images]]
    columns += [[{tuple(VOC_PALETTE[v].tolist()) for v in np.unique(labels)} for labels in maps]
                for maps in (*predictions.values(), truth)]
    white = {(255, 255, 255)}
    for col, cells in enumerate(columns):
        for row, expected in enumerate(cells):
            top = viz.TITLE_PX + row * panel
            cell = pixels[top : top + panel, col * panel : (col + 1) * panel]
            assert colours_in(cell) == expected | white, (row, col)
    assert len(colours_in(pixels[: viz.TITLE_PX])) > 2  # The titles, drawn above the cells.


@pytest.mark.parametrize("models, panel_px", [(1, 200), (0, 200), (2, 97)])
def test_the_legend_of_a_narrow_comparison_figure_fits_in_it(models, panel_px, tmp_path):
    """All 21 classes and void in a figure of 2 to 4 columns: the legend takes fewer columns and
    more rows, none of it cut off at the figure's edges (found by review: 6 columns always)."""
    truth = np.zeros((40, 60), np.uint8)
    truth.flat[:22] = [*range(21), IGNORE_LABEL]
    path = viz.plot_comparison([np.full((40, 60, 3), 128, np.uint8)], {f"m{i}": [truth] for i in range(models)}, [truth],
                               tmp_path / "fig.png", panel_px=panel_px)
    pixels = png_pixels(path)
    legend = pixels[viz.TITLE_PX + panel_px :]
    assert (legend[:, [0, 1, -2, -1]] == 255).all()  # White at both edges: nothing drawn to them.
    rows = (legend.shape[0] - viz.LEGEND_ROW_PX) // viz.LEGEND_ROW_PX
    assert rows == -(-22 // viz.legend_columns(viz.legend_handles([truth], VOC_CLASSES), pixels.shape[1])) > 22 // 6


def write_log(path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_training_curves_from_csv_logs(tmp_path):
    write_log(tmp_path / "a.csv", "epoch,loss,mean_iu,val_loss,val_mean_iu",
              ["0,2.0,0.1,2.2,0.05", "1,1.5,0.2,1.9,0.1", "1,1.4,0.25,1.8,0.12"])  # Resumed: epoch 1 twice.
    write_log(tmp_path / "b.csv", "epoch,learning_rate,loss", ["0,0.1,3.0", "1,0.1,2.5", "2,0.1,2.0"])
    log = viz.read_training_log(tmp_path / "a.csv")
    np.testing.assert_array_equal(log["epoch"], [0, 1])
    np.testing.assert_array_equal(log["val_mean_iu"], [0.05, 0.12])  # The last row of an epoch wins.
    assert set(viz.read_training_log(tmp_path / "b.csv")) == {"epoch", "loss"}
    path = viz.plot_training_curves({"FCN-32s": tmp_path / "a.csv", "FCN-16s": tmp_path / "b.csv"}, tmp_path / "curves.png", size_px=(640, 300))
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (300, 640)
    assert len(colours_in(pixels)) > 10  # Not a blank canvas.
    # The curves are drawn: each run's colour (C0, C1) in the loss plot (left); in the mean IU
    # plot (right) only FCN-32s's, as FCN-16s logged no mean IU.
    loss_half, iu_half = pixels[:, :320], pixels[:, 320:]
    assert count_colour(loss_half, C0) > 100 and count_colour(loss_half, C1) > 100
    assert count_colour(iu_half, C0) > 100 and count_colour(iu_half, C1) == 0


def test_training_curves_draw_each_log_by_epoch_from_1(tmp_path, drawn):
    """Train solid with circles, validation dashed with squares, a colour per run, at epochs
    1..E; a plot no run logged says so."""
    write_log(tmp_path / "a.csv", "epoch,loss,val_loss", ["0,2.0,2.5", "1,1.5,2.1"])
    write_log(tmp_path / "b.csv", "epoch,loss", ["0,3.0", "1,2.5", "2,2.0"])
    viz.plot_training_curves({"A": tmp_path / "a.csv", "B": tmp_path / "b.csv"}, tmp_path / "c.png", size_px=(400, 200))
    loss_axes, iu_axes = drawn[0].axes
    lines = {line.get_label(): line for line in loss_axes.lines}
    assert list(lines) == ["A train", "A val", "B train"]
    assert [line.get_xdata().tolist() for line in lines.values()] == [[1, 2], [1, 2], [1, 2, 3]]
    assert [line.get_ydata().tolist() for line in lines.values()] == [[2.0, 1.5], [2.5, 2.1], [3.0, 2.5, 2.0]]
    styles = [(line.get_linestyle(), line.get_marker()) for line in lines.values()]
    assert styles == [("-", "o"), ("--", "s"), ("-", "o")]
    assert [line.get_color() for line in lines.values()] == ["C0", "C0", "C1"]
    assert not iu_axes.lines and [text.get_text() for text in iu_axes.texts] == ["not logged"]
    with pytest.raises(ValueError, match="csv_paths is empty"):
        viz.plot_training_curves({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_training_log_in_epoch_order_with_empty_values_missing(tmp_path):
    # Rows out of epoch order are sorted; an empty value is missing, like NA.
    write_log(tmp_path / "log.csv", "epoch,loss,mean_iu,val_loss", ["1,1.5,,", "0,2.0,0.1,", "2,1.2,0.3,"])
    log = viz.read_training_log(tmp_path / "log.csv")
    assert set(log) == {"epoch", "loss", "mean_iu"}  # val_loss empty throughout: absent.
    np.testing.assert_array_equal(log["epoch"], [0, 1, 2])
    np.testing.assert_array_equal(log["loss"], [2.0, 1.5, 1.2])
    np.testing.assert_array_equal(log["mean_iu"], [0.1, np.nan, 0.3])


def test_training_log_of_a_run_without_validation_drops_its_na_columns(tmp_path):
    # Keras' CSVLogger writes NA where nothing was logged: val_* of a run without validation.
    write_log(tmp_path / "noval.csv", "epoch,loss,mean_iu,val_loss,val_mean_iu",
              ["0,2.0,0.1,NA,NA", "1,1.5,NA,NA,NA", "2,1.2,0.3,NA,NA"])
    log = viz.read_training_log(tmp_path / "noval.csv")
    assert set(log) == {"epoch", "loss", "mean_iu"}
    np.testing.assert_array_equal(log["mean_iu"], [0.1, np.nan, 0.3])
    write_log(tmp_path / "bad.csv", "epoch,loss", ["0,NA"])  # A required column must hold numbers.
    with pytest.raises(ValueError, match="holds a value that is not a number"):
        viz.read_training_log(tmp_path / "bad.csv")
    path = viz.plot_training_curves({"FCN-32s": tmp_path / "noval.csv"}, tmp_path / "curves.png", size_px=(400, 200))
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (200, 400)
    assert count_colour(pixels[:, :200], C0) > 50 and count_colour(pixels[:, 200:], C0) > 50  # Loss and mean IU drawn.


def test_training_curves_report_missing_files_and_columns(tmp_path):
    write_log(tmp_path / "no_loss.csv", "epoch,mean_iu", ["0,0.1"])
    with pytest.raises(ValueError, match=r"no_loss.csv lacks the column\(s\) \['loss'\]"):
        viz.plot_training_curves({"run": tmp_path / "no_loss.csv"}, tmp_path / "c.png")
    write_log(tmp_path / "empty.csv", "epoch,loss", [])
    with pytest.raises(ValueError, match="has a header but no rows"):
        viz.read_training_log(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        viz.read_training_log(tmp_path / "missing.csv")
    # A line cut short (a kill while it was written), two run together, a garbled epoch: the file
    # and line are named (found by review: float(None) and numpy's messages).
    write_log(tmp_path / "torn.csv", "epoch,loss,mean_iu", ["0,2.0,0.1", "1,1.5"])
    with pytest.raises(ValueError, match=r"torn.csv line 3 has 2 fields, its header 3 \(a line cut short"):
        viz.read_training_log(tmp_path / "torn.csv")
    write_log(tmp_path / "joined.csv", "epoch,loss", ["0,2.01,1.5"])
    with pytest.raises(ValueError, match=r"joined.csv line 2 has 3 fields, its header 2"):
        viz.read_training_log(tmp_path / "joined.csv")
    write_log(tmp_path / "garbled.csv", "epoch,loss", ["x,2.0"])
    with pytest.raises(ValueError, match=r"garbled.csv line 2: epoch 'x' is not a number"):
        viz.read_training_log(tmp_path / "garbled.csv")
    write_log(tmp_path / "infinite.csv", "epoch,loss", ["0,2.0", "inf,1.5"])  # Not an OverflowError traceback.
    with pytest.raises(ValueError, match=r"infinite.csv line 3: epoch 'inf' is not a number"):
        viz.read_training_log(tmp_path / "infinite.csv")
    write_log(tmp_path / "one.csv", "epoch,loss", ["0,2.0", "1"])  # One field, singular.
    with pytest.raises(ValueError, match=r"one.csv line 3 has 1 field, its header 2"):
        viz.read_training_log(tmp_path / "one.csv")
    assert not (tmp_path / "c.png").exists()


def test_confusion_matrix_is_row_normalised_and_drawn(tmp_path, drawn):
    confusion = np.diag(np.arange(1, 22)) * 100
    confusion[3, 4] = 100
    confusion[5] = 0  # A class absent from the truth.
    normalised = viz.row_normalised(confusion)
    assert normalised[0, 0] == normalised[20, 20] == 1.0
    assert normalised[3, 3] == pytest.approx(0.8) and normalised[3, 4] == pytest.approx(0.2)
    assert not normalised[5].any()
    path = viz.plot_confusion_matrix(confusion, VOC_CLASSES, tmp_path / "cm.png", size_px=500)
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (500, 500)
    assert len(colours_in(pixels)) > 10
    # The cells are drawn: those of value 1 (the diagonal but class 3's 0.8 and absent class 5)
    # in Blues' darkest colour, thousands of pixels along the image's diagonal (the colourbar's
    # top holds a few more).
    ys, xs = np.nonzero((pixels[..., :3] == (8, 48, 107)).all(axis=-1))
    assert len(ys) > 1000 and np.corrcoef(ys, xs)[0, 1] > 0.95
    assert len(drawn[0].axes[0].texts) == 21  # The percentages of the 21 cells of at least 0.5 %.
    for classes, texts in ((32, 32), (33, 0)):  # No numbers for more than 32 classes.
        viz.plot_confusion_matrix(np.eye(classes), [f"c{i}" for i in range(classes)], tmp_path / "eye.png", size_px=200)
        assert len(drawn[-1].axes[0].texts) == texts, classes
    with pytest.raises(ValueError, match="C = len\\(class_names\\) = 21"):
        viz.plot_confusion_matrix(np.ones((3, 3)), VOC_CLASSES, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"C = len\(class_names\) = 21. Received: shape \(21, 5\)"):
        viz.plot_confusion_matrix(np.ones((21, 5)), VOC_CLASSES, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_a_figure_that_fails_to_save_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """Written to a temporary file and renamed: a failed write (a full disk) leaves neither a torn
    PNG at the target nor a temporary file."""
    from matplotlib.figure import Figure

    path = tmp_path / "cm.png"
    viz.plot_confusion_matrix(np.eye(2), ["a", "b"], path, size_px=100)
    before = path.read_bytes()

    def torn(self, target, **kwargs):
        with open(target, "wb") as file:
            file.write(before[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(OSError, match="No space left on device"):
        viz.plot_confusion_matrix(np.eye(2), ["a", "b"], path, size_px=100)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["cm.png"]


def test_confusion_matrix_cells_hold_their_row_normalised_values(tmp_path, drawn):
    """Row = truth, column = prediction, colours on a fixed 0..1 scale, each cell of at least
    0.5 % labelled with its percentage, white on the dark cells (over 0.5)."""
    confusion = np.array([[3, 1, 0], [0, 0, 0], [0, 2, 2]])
    viz.plot_confusion_matrix(confusion, ["a", "b", "c"], tmp_path / "cm.png", size_px=300)
    axes = drawn[0].axes[0]
    (image,) = axes.images
    np.testing.assert_allclose(image.get_array(), [[0.75, 0.25, 0], [0, 0, 0], [0, 0.5, 0.5]])
    assert image.get_clim() == (0.0, 1.0)
    texts = {(text.get_position(), text.get_text(), text.get_color()) for text in axes.texts}
    assert texts == {((0, 0), "75", "white"), ((1, 0), "25", "black"), ((1, 2), "50", "black"), ((2, 2), "50", "black")}
    # Uniform rows (all 0.5): the middle of the scale, not its top as an autoscaled one would draw.
    viz.plot_confusion_matrix(np.ones((2, 2)), ["a", "b"], tmp_path / "half.png", size_px=300)
    assert drawn[1].axes[0].images[0].get_clim() == (0.0, 1.0)
