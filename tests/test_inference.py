"""Label maps on the device: the same labels as argmax of the logits, uint8, any size."""

import re

import numpy as np
import pytest

import keras

from fcn_keras.constants import PAD_RGB
from fcn_keras.inference import (
    TILE_CONTEXT, check_canvas, check_max_size, check_tile_size, downscale, downscaled_size, labels_model, min_tile_size,
    predict_labels, predict_labels_on_canvas, predict_labels_tiled, resize_labels, segment_in_tiles, segment_on_canvas,
    tile_spans,
)
from fcn_keras.model import build_fcn


@pytest.fixture(scope="module")
def model():
    keras.utils.clear_session()
    net = build_fcn("8s", fc_units=16)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    return net


@pytest.mark.parametrize("size", [(1, 1), (37, 91), (64, 48)])
def test_labels_equal_argmax_of_logits(model, size):
    images = np.random.default_rng(1).integers(0, 256, (3, *size, 3)).astype("uint8")
    logits = model.predict(images, verbose=0)
    labels = predict_labels(model, images, batch_size=2)
    assert labels.dtype == np.uint8 and labels.shape == (3, *size)
    np.testing.assert_array_equal(labels, logits.argmax(-1))
    if size != (1, 1):  # Random weights give varied labels: the comparison means something.
        assert len(np.unique(labels)) > 1


def test_labels_model_round_trips_through_a_keras_file(model, tmp_path):
    wrapped = labels_model(model)
    assert wrapped.output.dtype == "uint8" and wrapped.output.shape == (None, None, None)
    wrapped.save(tmp_path / "labels.keras")
    reloaded = keras.saving.load_model(tmp_path / "labels.keras")
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 50, 3)).astype("uint8")
    np.testing.assert_array_equal(predict_labels(reloaded, images), predict_labels(wrapped, images))


def test_labels_model_rejects_a_model_without_class_axis():
    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="classifier")
    with pytest.raises(ValueError, match=r"model must have one output of shape \[B, H, W, classes\]"):
        labels_model(flat)


def test_predict_labels_reuses_its_wrapper_and_refuses_one_image_without_a_batch_axis(model):
    images = np.random.default_rng(4).integers(0, 256, (2, 40, 52, 3)).astype("uint8")
    layers = [layer.name for layer in model.layers]
    first = predict_labels(model, images)
    wrapper = model._fcn_keras_labels_model
    np.testing.assert_array_equal(predict_labels(model, images), first)
    assert model._fcn_keras_labels_model is wrapper  # Built once: no new trace or compilation per call.
    assert [layer.name for layer in model.layers] == layers  # Not tracked as a part of the FCN.
    with pytest.raises(ValueError, match=r"images must be a batch \[N, H, W, 3\]. Received: shape \(40, 52, 3\) "
                                         r"\(one image: add a batch axis"):
        predict_labels(model, images[0])


# --- Canvas ------------------------------------------------------------------------------------


def test_canvas_calls_have_one_shape_padded_with_the_mean_colour_and_labels_are_cut_back():
    """With a per-pixel function the padding and cutting alone are tested (no net needed)."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (*size, 3)).astype("uint8") for size in ((30, 50), (48, 20), (48, 50))]
    calls = []

    def pixelwise(batch):
        calls.append(batch.copy())
        return batch[..., 0] // 3 + batch[..., 2] // 5

    labels = segment_on_canvas(pixelwise, images, (48, 50), batch_size=2)
    assert [batch.shape for batch in calls] == [(2, 48, 50, 3), (2, 48, 50, 3)]  # The last one filled up.
    for image, label_map in zip(images, labels):
        np.testing.assert_array_equal(label_map, image[..., 0] // 3 + image[..., 2] // 5)
    np.testing.assert_array_equal(calls[0][0, :30, :50], images[0])
    assert (calls[0][0, 30:] == PAD_RGB).all() and (calls[0][1, :, 20:] == PAD_RGB).all()
    assert (calls[1][1] == PAD_RGB).all()  # The blank canvas that fills the last call.
    floats = segment_on_canvas(lambda batch: batch[..., 1].astype("uint8"), [images[0].astype("float32") + 0.5], 64)
    np.testing.assert_array_equal(floats[0], images[0][..., 1])  # Float images are not rounded on the way.
    with pytest.raises(ValueError, match=re.escape("images[1] (48x20) is larger than the canvas 40x50 (height x width)")):
        segment_on_canvas(pixelwise, images[:2], (40, 50))
    with pytest.raises(ValueError, match=re.escape("images[0] must be one RGB image [H, W, 3]. Received: shape (1, 30, 50, 3)")):
        segment_on_canvas(pixelwise, [images[0][None]], 64)
    with pytest.raises(ValueError, match=re.escape("batch_size must be an integer >= 1. Received: batch_size=0")):
        segment_on_canvas(pixelwise, images, 64, batch_size=0)
    assert check_canvas(np.int64(500)) == (500, 500) and check_canvas((375, 500)) == (375, 500)
    for bad in (0, (375, 0), (1, 2, 3), 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"canvas must be an integer N or (height, width) of integers >= 1. "
                                                       f"Received: canvas={bad!r}")):
            check_canvas(bad)


def test_canvas_labels_are_those_of_the_padded_images(model):
    """A net on a canvas gives each image the labels of the image padded with the mean colour, cut
    back; they differ from the image's own only near the padding (every pixel of these small
    images is within the net's reach of it)."""
    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, (*size, 3)).astype("uint8") for size in ((40, 52), (64, 30), (17, 64))]
    canvases = np.empty((3, 64, 64, 3), np.uint8)
    canvases[...] = PAD_RGB
    for canvas, image in zip(canvases, images):
        canvas[:image.shape[0], :image.shape[1]] = image
    padded = predict_labels(model, canvases, batch_size=3)
    labels = predict_labels_on_canvas(model, images, 64, batch_size=3)
    assert [label_map.dtype for label_map in labels] == [np.uint8] * 3
    for label_map, image, expected in zip(labels, images, padded):
        np.testing.assert_array_equal(label_map, expected[:image.shape[0], :image.shape[1]])
    own = predict_labels(model, images[0][None])[0]
    assert 0 < (labels[0] != own).mean() < 0.5 and len(np.unique(own)) > 1
    assert (labels[0][:8, :8] == own[:8, :8]).mean() > (labels[0][-8:, -8:] == own[-8:, -8:]).mean()


# --- Tiles -------------------------------------------------------------------------------------


def test_downscale_shrinks_the_longer_side_antialiased_and_leaves_fitting_images_alone():
    assert downscaled_size(37, 91, 40) == (16, 40) and downscaled_size(3000, 4000, 500) == (375, 500)
    assert downscaled_size(40, 40, 40) == (40, 40) and downscaled_size(1, 1000, 10) == (1, 10)  # Sides stay >= 1.
    fits = np.zeros((40, 30, 3), np.uint8)
    assert downscale(fits, 40) is fits
    # A one-pixel checkerboard halved: antialiased, every output pixel averages black and white
    # (point sampling would keep one of them: all 0 or all 255).
    board = (np.indices((64, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = downscale(np.repeat(board[..., None], 3, axis=-1), 48)
    assert small.shape == (32, 48, 3) and small.dtype == np.uint8
    assert np.abs(small[2:-2, 2:-2].astype(int) - 128).max() <= 2
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match=re.escape(f"max_size must be an integer >= 1 (pixels of an image's longer "
                                                       f"side). Received: max_size={bad!r}")):
            check_max_size(bad)
    with pytest.raises(ValueError, match=r"image must be uint8 \[H, W, 3\]. Received: float32 \(50, 50, 3\)"):
        downscale(np.zeros((50, 50, 3), np.float32), 10)


def test_resize_labels_takes_the_label_under_each_pixel_centre():
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, (4, 6)), np.repeat(np.repeat(labels, 2, axis=0), 3, axis=1))
    assert resize_labels(labels, (2, 2)) is labels
    rng = np.random.default_rng(5)
    big = rng.integers(0, 21, (37, 91)).astype(np.uint8)
    np.testing.assert_array_equal(resize_labels(resize_labels(big, (74, 273)), (37, 91)), big)  # Integer factors.
    odd = resize_labels(big, (50, 60))  # No label is invented, and none is shifted: each is its centre's.
    assert set(np.unique(odd)) <= set(np.unique(big))
    assert odd[49, 59] == big[int(49.5 * 37 / 50), int(59.5 * 91 / 60)] and odd[0, 0] == big[0, 0]


@pytest.mark.parametrize("length, tile_size", [(900, 672), (1000, 480), (2000, 1024), (3001, 2048), (700, 700)])
def test_tile_spans_cover_the_axis_once_on_the_grid_with_context(length, tile_size):
    spans = tile_spans(length, tile_size)
    assert spans[0].keep_start == 0 and spans[-1].keep_stop == length
    for span, following in zip(spans, spans[1:]):
        assert span.keep_stop == following.keep_start  # Kept parts tile the axis: no gap, no overlap.
    for span in spans:
        assert span.start % 32 == 0 and 0 <= span.start <= span.keep_start < span.keep_stop <= span.stop <= length
        assert span.stop - span.start <= tile_size
        assert span.start == 0 or span.keep_start - span.start >= TILE_CONTEXT
        assert span.stop == length or span.stop - span.keep_stop >= TILE_CONTEXT
    if length > tile_size:  # Equal kept parts, as wide as the tile allows, but the last.
        keep = (tile_size - 448) // 32 * 32
        first = (tile_size - 224) // 32 * 32
        assert spans[0].keep_stop == first and {span.keep_stop - span.keep_start for span in spans[1:-1]} <= {keep}
        assert len(spans) == 1 + -(-(length - first - 224) // keep)


def test_tile_spans_refuse_a_tile_too_small_to_keep_anything():
    assert TILE_CONTEXT == 221 and min_tile_size() == 480
    assert tile_spans(479, 479) == [(0, 479, 0, 479)]  # The whole axis fits: no context needed.
    with pytest.raises(ValueError, match=r"tile_size must be at least 480 pixels: each tile needs 221 pixels of "
                                         r"context on each side .* Received: tile_size=479"):
        tile_spans(600, 479)


def test_tiles_are_assembled_in_place():
    """With a per-pixel function the assembly alone is tested, in both axes (no net needed)."""
    image = np.random.default_rng(5).integers(0, 256, (1300, 1700, 3)).astype("uint8")
    calls = []

    def pixelwise(tile):
        calls.append(tile.shape[:2])
        return (tile[..., 0] // 2 + tile[..., 1] // 3).astype("uint8")

    labels = segment_in_tiles(pixelwise, image, (600, 800))
    np.testing.assert_array_equal(labels, pixelwise(image))
    assert max(h for h, _ in calls[:-1]) <= 600 and max(w for _, w in calls[:-1]) <= 800
    assert len(calls) == 1 + len(tile_spans(1300, 600)) * len(tile_spans(1700, 800))


@pytest.mark.parametrize("variant, geometry", [("8s", "reference"), ("32s", "reference"), ("8s", "same")])
def test_tiled_labels_equal_the_whole_image_labels(variant, geometry):
    """A tall image in 3 tiles (the first, one with two artificial edges, the last): the logits of every
    tile's kept rows are the whole image's, and so are the labels wherever the whole image's two
    best classes are not tied to within rounding."""
    keras.utils.clear_session()
    net = build_fcn(variant, fc_units=8, geometry=geometry)
    rng = np.random.default_rng(6)
    for layer in net.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    image = rng.integers(0, 256, (900, 40, 3)).astype("uint8")
    spans = tile_spans(900, 672)
    assert [tuple(span) for span in spans] == [(0, 672, 0, 448), (224, 896, 448, 672), (448, 900, 672, 900)]
    whole_logits = net.predict(image[np.newaxis], verbose=0)[0]
    # Equal up to the rounding of the CPU's convolution algorithms, which differ between shapes.
    tolerance = 1e-5 * np.abs(whole_logits).max()
    for span in spans:
        tile_logits = net.predict(image[np.newaxis, span.start:span.stop], verbose=0)[0]
        np.testing.assert_allclose(tile_logits[span.keep_start - span.start:span.keep_stop - span.start],
                                   whole_logits[span.keep_start:span.keep_stop], rtol=0, atol=tolerance)
    # The context matters: the middle tile's kept rows read with 32 pixels less on each side differ.
    short = net.predict(image[np.newaxis, 448 - 192:672 + 192], verbose=0)[0, 192:-192]
    assert np.abs(short - whole_logits[448:672]).max() > 10 * tolerance
    best_two = np.sort(whole_logits, axis=-1)[..., -2:]
    decided = best_two[..., 1] - best_two[..., 0] > tolerance
    assert decided.mean() > 0.999
    whole = whole_logits.argmax(-1)
    assert len(np.unique(whole)) > 3
    tiled = predict_labels_tiled(net, image, 672)
    assert tiled.dtype == np.uint8 and tiled.shape == (900, 40)
    np.testing.assert_array_equal(tiled[decided], whole[decided])


def test_tiled_prediction_refuses_a_model_of_unknown_reach(model):
    inputs = keras.Input((None, None, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs), name="other")
    with pytest.raises(ValueError, match=r"tiled prediction needs an FCN-VGG16 .* model 'other' has no layers "
                                         r"\['block5_pool', 'fc6', 'score_fr'\]"):
        predict_labels_tiled(other, np.zeros((600, 600, 3), "uint8"), 480)
    with pytest.raises(ValueError, match=r"image must be one RGB image \[H, W, 3\]. Received: shape \(1, 60, 60, 3\)"):
        predict_labels_tiled(model, np.zeros((1, 60, 60, 3), "uint8"), 480)
    assert check_tile_size(np.int64(500)) == (500, 500) and check_tile_size((480, 640)) == (480, 640)
    for bad in (480.5, (480, 500.0), (480,), True):
        with pytest.raises(ValueError, match=r"tile_size must be an integer N or \(height, width\) of integers"):
            check_tile_size(bad)
    with pytest.raises(ValueError, match=r"--tile_size must be at least 480 .* Received: --tile_size=479x500"):
        check_tile_size((479, 500), "--tile_size")
