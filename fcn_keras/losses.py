"""The training loss: per-pixel softmax cross-entropy that ignores void pixels.

The paper sums the per-pixel losses over the image ("unnormalized"); this loss divides the sum
by the number of non-void pixels in the batch, so its scale does not depend on the image size.
``docs/evaluation.md`` ("Loss normalisation and the paper's learning rates") gives the exact
relation between the two and how the paper's learning rates translate.
"""

from __future__ import annotations

from typing import Any

import keras
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
    """``sample_weight`` with the labels' rank (``[B, H, W]``: 3): a ``[B, H, W, 1]`` weight is
    squeezed, per-image ``[B]`` weights get trailing axes to broadcast."""
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

    Args:
        ignore_label: label value of void pixels (255 in VOC).
        reduction: ``"sum_over_batch_size"`` (default), ``"mean"`` or
            ``"mean_with_sample_weight"``: all three are the mean over valid pixels (weighted by
            ``sample_weight`` when given). ``"sum"``: the paper's summed loss. ``"none"`` /
            ``None``: the per-pixel losses ``[B, H, W]``, 0 at void pixels.
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

    # --- Per-pixel losses ----------------------------------------------------------------------

    def pixel_losses(self, y_true, y_pred):
        """Per-pixel cross-entropy and the validity mask.

        Args:
            y_true: int or uint8 labels ``[B, H, W]`` or ``[B, H, W, 1]``.
            y_pred: float logits ``[B, H, W, C]``.

        Returns:
            ``(losses, valid)``: float32 ``[B, H, W]`` each; ``losses`` is 0 where ``valid`` is 0.
        """
        y_pred = ops.cast(y_pred, "float32")
        labels, valid = class_labels(y_true, y_pred, self.ignore_label)
        # Void pixels get class 0 (a legal index) and weight 0: no boolean indexing needed.
        safe_labels = ops.where(valid, labels, 0)
        losses = ops.sparse_categorical_crossentropy(safe_labels, y_pred, from_logits=True)
        valid = ops.cast(valid, "float32")
        return losses * valid, valid

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            losses, valid = self.pixel_losses(y_true, y_pred)
            weights = valid
            if sample_weight is not None:
                weights = valid * ops.cast(pixel_sample_weight(sample_weight, len(valid.shape)), "float32")
            if self.reduction in (None, "none"):
                return losses * weights
            total = ops.sum(losses * weights)
            if self.reduction == "sum":
                return total
            # 0, not NaN, when the batch has no valid pixel.
            return ops.divide_no_nan(total, _global_sum(ops.sum(weights)))

    def call(self, y_true, y_pred):
        """Per-pixel losses ``[B, H, W]`` (float32, 0 at void pixels), without reduction."""
        return self.pixel_losses(y_true, y_pred)[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ignore_label": self.ignore_label}


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
