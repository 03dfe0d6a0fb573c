"""The paper's metrics (section 5) from a confusion matrix, and a streaming Keras metric.

With ``n_ij`` the number of pixels of class ``i`` predicted to belong to class ``j`` and
``t_i = sum_j n_ij`` the number of pixels of class ``i``:

- pixel accuracy: ``sum_i n_ii / sum_i t_i``
- mean accuracy: ``(1/n_cl) sum_i n_ii / t_i``
- mean IU: ``(1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
- frequency weighted IU: ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

Absent classes, as in the authors' ``score.py`` (``np.nanmean``): mean accuracy averages over
the classes present in the ground truth (``t_i > 0``); mean IU over the classes present in the
ground truth or in the prediction (a class predicted but absent from the truth has IU 0 and
counts); f.w. IU weights by ``t_i``, so absent classes weigh nothing. Void pixels (label 255)
and labels outside ``[0, n_cl)`` are excluded from the matrix.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from fcn_keras.checks import check_int
from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES
from fcn_keras.losses import class_labels, pixel_sample_weight

# --- Scores from a confusion matrix (numpy) ----------------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Counts (truth, prediction) pairs on the host.

    Args:
        labels: integer ground truth of any shape, ``ignore_label`` = void.
        predictions: integer predicted classes in ``[0, num_classes)``, same shape as ``labels``.
        num_classes: ``n_cl``.
        ignore_label: void label, excluded (as is any label outside ``[0, num_classes)``).

    Returns:
        int64 ``[num_classes, num_classes]``, rows = truth, columns = prediction.

    Raises:
        ValueError: the shapes differ, or a prediction at a counted pixel is not a class.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must have the same shape. Received: labels.shape="
            f"{labels.shape}, predictions.shape={predictions.shape}"
        )
    labels = labels.astype(np.int64).ravel()
    predictions = predictions.astype(np.int64).ravel()
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    predictions = predictions[valid]
    wrong = (predictions < 0) | (predictions >= num_classes)
    if wrong.any():
        raise ValueError(f"predictions must be classes in [0, {num_classes}); {int(wrong.sum())} are not, e.g. "
                         f"{sorted(set(predictions[wrong].tolist()))[:5]}")
    index = num_classes * labels[valid] + predictions
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict[str, Any]:
    """The four metrics of the paper and the per-class IU.

    Args:
        confusion: ``[C, C]`` counts (any numeric dtype), rows = truth, columns = prediction.

    Returns:
        ``dict(pixel_accuracy, mean_accuracy, mean_iu, fw_iu)`` of floats and ``per_class_iu``,
        a list of ``C`` floats with ``None`` for classes absent from both truth and prediction.

    Raises:
        ValueError: ``confusion`` is not square, has negative entries, or counts no pixel.
    """
    hist = np.asarray(confusion, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix. Received: shape {hist.shape}")
    if (hist < 0).any():
        raise ValueError("confusion must hold counts >= 0; it has negative entries")
    total = hist.sum()
    if total == 0:
        raise ValueError("confusion counts no pixel: no non-void label was evaluated")
    diag = np.diag(hist)
    truth = hist.sum(axis=1)  # t_i
    union = truth + hist.sum(axis=0) - diag  # t_i + sum_j n_ji - n_ii
    present = truth > 0
    counted = union > 0
    iu = np.divide(diag, union, out=np.zeros_like(diag), where=counted)
    return {
        "pixel_accuracy": float(diag.sum() / total),
        "mean_accuracy": float(np.mean(diag[present] / truth[present])),
        "mean_iu": float(np.mean(iu[counted])),
        "fw_iu": float((truth * iu).sum() / total),
        "per_class_iu": [float(v) if c else None for v, c in zip(iu, counted)],
    }


# --- Streaming Keras metric --------------------------------------------------------------------

# A count is high * _LOW_WORD + low, in two int32 words (ConfusionMatrix).
_LOW_WORD = 2**20


@keras.saving.register_keras_serializable(package="fcn_keras")
class ConfusionMatrix(keras.metrics.Metric):
    """Streaming confusion matrix of per-pixel predictions; ``result()`` is the mean IU.

    The state is a ``[C, C]`` matrix of counts (rows = truth, columns = prediction), summed
    across replicas under ``tf.distribute``; ``confusion`` reads it on the host as int64. The
    update takes the argmax of the logits and counts pairs with ``segment_sum`` (void and
    out-of-range labels are sent to bin 0 with weight 0), so it compiles under XLA and
    ``jax.jit``. Each cell is two int32 words, ``high * 2**20 + low`` (JAX has no int64 unless
    x64 is on): one int32 wraps at 2**31 pixels, which an epoch of 4,000 steps of 8 crops of
    512x512 passes in the background cell after about 1,000 steps; two hold 2**51.

    Args:
        num_classes: ``C``.
        ignore_label: void label (255).
        name: metric name (the key in the Keras logs, e.g. ``val_mean_iu``).

    Update args:
        y_true: int/uint8 labels ``[B, H, W]`` (or ``[B, H, W, 1]``).
        y_pred: float logits ``[B, H, W, C]``.
        sample_weight: optional weights broadcastable to ``[B, H, W]`` (or ``[B, H, W, 1]``);
            rounded to integers.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_label: int = IGNORE_LABEL,
        name: str = "mean_iu",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes = check_int("num_classes", num_classes, 2)
        self.ignore_label = ignore_label
        shape = (num_classes, num_classes)
        self.confusion_high = self.add_variable(shape, "zeros", dtype="int32", name="confusion_high")
        self.confusion_low = self.add_variable(shape, "zeros", dtype="int32", name="confusion_low")

    @property
    def confusion(self) -> np.ndarray:
        """The int64 ``[C, C]`` counts on the host (``scores(metric.confusion)`` gives all four)."""
        high = np.asarray(keras.ops.convert_to_numpy(self.confusion_high), np.int64)
        return high * _LOW_WORD + np.asarray(keras.ops.convert_to_numpy(self.confusion_low), np.int64)

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        c = self.num_classes
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != c:
            raise ValueError(
                f"y_pred must have {c} classes on its last axis (num_classes={c}). Received: "
                f"y_pred.shape={tuple(y_pred.shape)}"
            )
        labels, valid = class_labels(y_true, y_pred, self.ignore_label)
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        weights = ops.cast(valid, "int32")
        if sample_weight is not None:
            sample_weight = pixel_sample_weight(sample_weight, len(labels.shape))
            weights = weights * ops.cast(ops.round(sample_weight), "int32")
            weights = ops.broadcast_to(weights, ops.shape(labels))
        index = ops.where(valid, labels * c + predicted, 0)
        counts = ops.segment_sum(
            ops.reshape(weights, (-1,)), ops.reshape(index, (-1,)), num_segments=c * c
        )
        # One update adds at most the batch's pixels (< 2**31 - 2**20) to a low word < 2**20; the
        # replicas of tf.distribute each keep their own words (the metric's variables are
        # synchronised on read), so each carries its own.
        low = self.confusion_low + ops.reshape(counts, (c, c))
        carry = ops.floor_divide(low, _LOW_WORD)
        self.confusion_high.assign_add(carry)
        self.confusion_low.assign(low - carry * _LOW_WORD)

    def result(self):
        """Mean IU (float32) over the classes present in the truth or the prediction; 0 if none."""
        hist = ops.cast(self.confusion_high, "float32") * _LOW_WORD + ops.cast(self.confusion_low, "float32")
        diag = ops.diagonal(hist)
        union = ops.sum(hist, axis=0) + ops.sum(hist, axis=1) - diag
        counted = ops.cast(union > 0, "float32")
        iu = ops.divide_no_nan(diag, union)
        return ops.divide_no_nan(ops.sum(iu * counted), ops.sum(counted))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}
