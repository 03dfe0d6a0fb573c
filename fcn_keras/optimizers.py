"""The optimizer of the reference FCNs: SGD with momentum as Caffe runs it (``--optimizer=sgd``).

Registered with Keras (``fcn_keras>CaffeSGD``), so a ``.keras`` file trained with it loads
compiled once ``fcn_keras`` is imported.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="fcn_keras")
class CaffeSGD(keras.optimizers.SGD):
    """SGD with momentum as Caffe runs it for the reference FCNs.

    The weight decay is an L2 term added to the gradient of every kernel before the momentum
    update (Caffe's ``weight_decay`` with the nets' ``decay_mult=1``; biases ``decay_mult=0``),
    not Keras' decoupled ``weight_decay``; biases learn at ``bias_lr_mult`` (2) times the rate
    (``lr_mult=2``). Keras' SGD momentum ``m = mu m - lr g; w += m`` is Caffe's.

    Args:
        learning_rate: float or schedule.
        momentum: ``mu`` (0.99 in the reference solvers).
        l2: weight decay coefficient on kernels (5e-4).
        bias_lr_mult: learning rate multiplier of biases.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.99, l2: float = 5e-4, bias_lr_mult: float = 2.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = float(l2)
        self.bias_lr_mult = float(bias_lr_mult)

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        # The biases by their Keras names, found again in update_step by index, as SGD finds a
        # variable's momentum: under TensorFlow update_step gets the tf.Variable inside (named
        # ``bias:0``, and ``bias/replica_1:0`` on MirroredStrategy's second replica).
        self._bias_indices = frozenset(index for index, variable in enumerate(variables) if variable.name == "bias")

    def update_step(self, gradient, variable, learning_rate):
        gradient = keras.ops.cast(gradient, variable.dtype)
        if self._get_variable_index(variable) in self._bias_indices:
            learning_rate = learning_rate * self.bias_lr_mult
        elif self.l2:
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2": self.l2, "bias_lr_mult": self.bias_lr_mult}


def batches_applied(optimizer: keras.optimizers.Optimizer) -> int:
    """The training batches ``optimizer`` has applied (its step count).

    With ``gradient_accumulation_steps`` N, Keras' ``optimizer.iterations`` counts updates
    (batches // N); this reads the batch counter it is derived from, through the
    ``LossScaleOptimizer`` that wraps the optimizer under ``mixed_float16`` (whose skipped
    steps, non-finite gradients, are not counted).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(keras.ops.convert_to_numpy(inner._iterations))  # Keras' counter behind ``iterations``.
