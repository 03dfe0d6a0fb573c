"""The training loss: per-pixel softmax cross-entropy that ignores void pixels.

The paper sums the per-pixel losses over the image ("unnormalized"); this loss divides the sum
by the number of non-void pixels in the batch, so its scale does not depend on the image size.
``docs/evaluation.md`` ("Loss normalisation and the paper's learning rates") gives the exact
relation between the two and how the paper's learning rates translate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from fcn_keras.constants import IGNORE_LABEL



# --- Labels and weights per pixel (shared with fcn_keras.metrics.ConfusionMatrix) ---------------


def class_labels(y_true, y_pred, ignore_label: int = IGNORE_LABEL):
    """The labels as int32 ``[B, H, W]`` and which pixels count.

    Args:
        y_true: int or uint8 labels ``[B, H, W]`` or ``[B, H, W, 1]``.
        y_pred: ``[B, H, W, C]`` (logits or scores).
        ignore_label: the void label.

    Returns:
        ``(labels, valid)``: int32 ``[B, H, W]`` and bool ``[B, H, W]``, true where the label is
        a class, in ``[0, C)`` (``ignore_label`` and any other value are void).
    """
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape):  # [B, H, W, 1]
        labels = ops.squeeze(labels, axis=-1)
    valid = (labels >= 0) & (labels < ops.shape(y_pred)[-1]) & ops.not_equal(labels, ignore_label)
    return labels, valid


def pixel_sample_weight(sample_weight, rank: int):
    """``sample_weight`` with the labels' rank, to broadcast against per-pixel values.

    Args:
        sample_weight: float weights ``[B]`` (per image), ``[B, H, W]`` or ``[B, H, W, 1]``.
        rank: the labels' rank (3 for ``[B, H, W]``).

    Returns:
        The weights as a tensor of rank ``rank``: ``[B, H, W, 1]`` squeezed to ``[B, H, W]``,
        ``[B]`` expanded to ``[B, 1, 1]``.
    """
    sample_weight = ops.convert_to_tensor(sample_weight)
    if len(sample_weight.shape) == rank + 1:  # [B, H, W, 1], as labels may be.
        sample_weight = ops.squeeze(sample_weight, axis=-1)
    while len(sample_weight.shape) < rank:
        sample_weight = ops.expand_dims(sample_weight, -1)
    return sample_weight


# --- The loss ------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="fcn_keras")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy per pixel, void pixels excluded, mean over the valid pixels.

    ``loss = sum_{valid p} -log softmax(y_pred[p])[y_true[p]] / N_valid`` where a pixel is valid
    when its label is a class, in ``[0, C)``: ``ignore_label`` and any other value are void, as
    in ``fcn_keras.metrics.ConfusionMatrix``, under every backend. A batch without valid pixels gives 0 (not NaN) and
    zero gradients. The computation is float32 whatever the dtype policy (mixed precision) and
    uses only masks, no boolean indexing, so it compiles under XLA / ``jax.jit``.

    Labels outside ``[0, C)`` cannot raise an error inside a compiled step; a model with fewer
    classes than its data's labels (say 3 on VOC's 21) trains on the pixels of its own classes.

    With ``class_weights`` (the class balancing of the paper's section 4.3, which it found
    unnecessary on VOC) each valid pixel weighs ``w[label]`` and the mean is weighted:
    ``sum_p w[y_p] l_p / sum_p w[y_p]``.

    Args:
        ignore_label: label value of void pixels (255 in VOC).
        class_weights: ``None`` (every pixel weighs 1) or ``C`` non-negative finite weights, one
            per class (see ``median_frequency_weights``); checked against the logits' ``C``.
        reduction: ``"sum_over_batch_size"`` (default), ``"mean"`` or
            ``"mean_with_sample_weight"``: all three are the mean over valid pixels (weighted by
            ``sample_weight`` when given). ``"sum"``: the paper's summed loss. ``"none"`` /
            ``None``: the per-pixel losses ``[B, H, W]`` times their weights (class weight x
            ``sample_weight``; 1 without them), 0 at void pixels.
        name: loss name.

    Call args:
        y_true: int or uint8 labels ``[B, H, W]`` (or ``[B, H, W, 1]``).
        y_pred: float logits ``[B, H, W, C]``.
        sample_weight: optional float weights broadcastable to ``[B, H, W]`` (or ``[B, H, W, 1]``).

    Returns:
        float32 scalar (or ``[B, H, W]`` for ``reduction="none"``).
    """

    def __init__(
        self,
        ignore_label: int = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "segmentation_cross_entropy",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("dtype", None)  # Always float32: saved configs may carry a dtype.
        super().__init__(name=name, reduction=reduction, dtype="float32", **kwargs)
        if not isinstance(ignore_label, int) or ignore_label < 0:
            raise ValueError(
                f"ignore_label must be a non-negative integer. Received: ignore_label={ignore_label!r}"
            )
        self.ignore_label = ignore_label
        self.class_weights = None if class_weights is None else check_class_weights(class_weights)

    # --- Per-pixel losses ----------------------------------------------------------------------

    def pixel_losses(self, y_true, y_pred):
        """Per-pixel cross-entropy and weight.

        Args:
            y_true: int or uint8 labels ``[B, H, W]`` or ``[B, H, W, 1]``.
            y_pred: float logits ``[B, H, W, C]``.

        Returns:
            ``(losses, weights)``: float32 ``[B, H, W]`` each; ``weights`` is 0 at void pixels,
            else 1 (or the class weight of the pixel's label); ``losses`` is 0 at void pixels.

        Raises:
            ValueError: ``class_weights`` has not ``C`` entries.
        """
        y_pred = ops.cast(y_pred, "float32")
        labels, valid = class_labels(y_true, y_pred, self.ignore_label)
        # Void pixels get class 0 (a legal index) and weight 0: no boolean indexing needed.
        safe_labels = ops.where(valid, labels, 0)
        losses = ops.sparse_categorical_crossentropy(safe_labels, y_pred, from_logits=True)
        valid = ops.cast(valid, "float32")
        weights = valid
        if self.class_weights is not None:
            if y_pred.shape[-1] != len(self.class_weights):
                raise ValueError(f"class_weights has {len(self.class_weights)} entries but the logits have "
                                 f"{y_pred.shape[-1]} classes. Received: class_weights={self.class_weights!r}")
            weights = valid * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        return losses * valid, weights

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            losses, weights = self.pixel_losses(y_true, y_pred)
            if sample_weight is not None:
                weights = weights * ops.cast(pixel_sample_weight(sample_weight, len(weights.shape)), "float32")
            if self.reduction in (None, "none"):
                return losses * weights
            total = ops.sum(losses * weights)
            if self.reduction == "sum":
                return total
            # 0, not NaN, when the batch has no valid pixel.
            return ops.divide_no_nan(total, _global_sum(ops.sum(weights)))

    def call(self, y_true, y_pred):
        """Per-pixel losses ``[B, H, W]`` (float32, 0 at void pixels), without reduction or class
        weights (``__call__`` applies those)."""
        return self.pixel_losses(y_true, y_pred)[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ignore_label": self.ignore_label, "class_weights": self.class_weights}


def check_class_weights(class_weights: Sequence[float], num_classes: int | None = None) -> list[float]:
    """``class_weights`` as floats, checked: one finite weight >= 0 per class, not all 0.

    Args:
        class_weights: the weights.
        num_classes: the number of classes they must have (any number >= 2 when ``None``).

    Raises:
        ValueError: naming ``class_weights`` and what is wrong.
    """
    weights = [float(w) for w in class_weights]
    if num_classes is None:
        count, wrong_count = "at least 2", len(weights) < 2
    else:
        count, wrong_count = f"{num_classes}", len(weights) != num_classes
    if wrong_count or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"class_weights must be one finite weight >= 0 per class ({count}), not all 0. "
                         f"Received: class_weights={weights!r}")
    return weights


def median_frequency_weights(class_pixels: Sequence[int], image_pixels: Sequence[int] | None = None) -> list[float]:
    """Eigen & Fergus' median frequency balancing: ``w_c = median_k(f_k) / f_c``.

    With ``image_pixels`` (their definition), ``f_c = class_pixels[c] / image_pixels[c]``: the
    pixels of class ``c`` over the labelled pixels of the images where ``c`` appears, so a class
    that is large where it appears but rare across images is not inflated. Without it,
    ``f_c`` is ``c``'s fraction of all labelled pixels of the split (the converter's counts from
    before ``class_image_pixels`` were recorded). The median is over the classes present; a class
    with no pixel gets weight 0 (no pixel ever asks for it). The weights of a balanced split are
    all 1.

    Args:
        class_pixels: the pixels of each class, e.g. a split's ``class_pixels`` in the
            converter's ``manifest.json``.
        image_pixels: for each class, the labelled (non-void) pixels of the images holding it,
            a split's ``class_image_pixels``; ``None``: frequencies over the whole split.

    Returns:
        One weight per class.

    Raises:
        ValueError: fewer than 2 counts, a negative count, no pixel at all, or ``image_pixels``
            of another length or below ``class_pixels`` (or 0 where the class has pixels).
    """
    counts = np.asarray(class_pixels, np.float64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any() or not counts.sum():
        raise ValueError(f"class_pixels must be >= 2 non-negative counts, not all 0. Received: class_pixels={list(class_pixels)!r}")
    if image_pixels is None:
        frequencies = counts / counts.sum()
    else:
        totals = np.asarray(image_pixels, np.float64)
        if totals.shape != counts.shape or (totals < counts).any():
            raise ValueError(f"image_pixels must hold one count per class, each at least the class's pixels. Received: "
                             f"image_pixels={list(image_pixels)!r} for class_pixels={list(class_pixels)!r}")
        frequencies = np.divide(counts, totals, out=np.zeros_like(counts), where=counts > 0)
    median = float(np.median(frequencies[counts > 0]))
    return [median / f if f > 0 else 0.0 for f in frequencies.tolist()]


def _global_sum(count):
    """``count`` summed over the replicas of a ``tf.distribute`` strategy; itself otherwise.

    Keras' TensorFlow trainer sums the replicas' gradients (and multiplies the logged loss by
    the number of replicas before averaging it over them), so when each replica divides its own
    sum of pixel losses by the *global* number of valid pixels, the update and the logged loss
    are exactly those of one device on the whole batch, however unevenly the void pixels fall
    between the replicas. (Dividing each replica's own mean by the number of replicas, as Keras'
    built-in losses do, gives that only when the replicas hold equally many valid pixels.)
    Under JAX, ``keras.distribution`` shards one global computation, so the sum is global already.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return count
