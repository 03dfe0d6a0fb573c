"""fcn-keras: Fully Convolutional Networks (Long, Shelhamer & Darrell) in Keras 3."""

from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES, VARIANTS, VOC_CLASSES, VOC_PALETTE

__version__ = "0.1.0"

__all__ = ["IGNORE_LABEL", "NUM_CLASSES", "VARIANTS", "VOC_CLASSES", "VOC_PALETTE", "__version__"]
