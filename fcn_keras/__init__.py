"""fcn-keras: Fully Convolutional Networks (Long, Shelhamer & Darrell) in Keras 3.

    from fcn_keras import build_fcn
    model = build_fcn("8s", weights="imagenet")        # RGB uint8 [B, H, W, 3] in,
    logits = model.predict(images)                     # float32 [B, H, W, 21] out
"""

from fcn_keras.architecture import crop_offsets, output_stride
from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES, VARIANTS, VOC_CLASSES, VOC_PALETTE
from fcn_keras.model import build_fcn
from fcn_keras.surgery import transfer_weights, transplant_vgg16

__version__ = "0.1.0"

__all__ = [
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "VARIANTS",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "__version__",
    "build_fcn",
    "crop_offsets",
    "output_stride",
    "transfer_weights",
    "transplant_vgg16",
]
