"""fcn-keras: Fully Convolutional Networks (Long, Shelhamer & Darrell) in Keras 3.

    from fcn_keras import build_fcn
    model = build_fcn("8s", weights="imagenet")        # RGB uint8 [B, H, W, 3] in,
    logits = model.predict(images)                     # float32 [B, H, W, 21] out

Importing the package registers every class a saved run refers to (layers, loss, metric,
optimizer), so ``keras.saving.load_model("runs/fcn8s/best.keras")`` works after ``import
fcn_keras``, compiled as the model was trained.
"""

from fcn_keras.architecture import crop_offsets, output_stride
from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES, VARIANTS, VOC_CLASSES, VOC_PALETTE
from fcn_keras.inference import ArgmaxLabels
from fcn_keras.losses import SegmentationCrossEntropy
from fcn_keras.metrics import ConfusionMatrix
from fcn_keras.model import build_fcn
from fcn_keras.optimizers import CaffeSGD
from fcn_keras.surgery import transfer_weights, transplant_vgg16

__version__ = "0.1.0"

__all__ = [
    "ArgmaxLabels",
    "CaffeSGD",
    "ConfusionMatrix",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "SegmentationCrossEntropy",
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
