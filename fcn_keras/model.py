"""``build_fcn``: the FCN-VGG16 family (FCN-32s, FCN-16s, FCN-8s) as one Keras functional builder.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015,
TPAMI 2017). The builder walks the table in ``fcn_keras.architecture``; layer names are the
paper's (``fc6``, ``score_fr``, ``upscore2``, ``score_pool4``, ``fuse_pool4``, ...) and
keras.applications.VGG16's for the trunk (``block1_conv1`` ... ``block5_pool``), so weights load
and move by name.
"""

from __future__ import annotations

import logging
import numbers
import os

import keras
import numpy as np

from fcn_keras import architecture as arch
from fcn_keras.backbone import load_vgg16, resolve_preprocessing
from fcn_keras.checks import check_choice, check_int, is_integer
from fcn_keras.constants import NUM_CLASSES, PREPROCESSING_MODES
from fcn_keras.layers import (
    BilinearUpsampling, CropToReference, Deconvolution, Im2colConv2D, Preprocess, ReshapeMaxPooling2D,
)
from fcn_keras.surgery import transplant_vgg16

logger = logging.getLogger(__name__)

#: How fc6 is computed: ``keras.layers.Conv2D`` or ``fcn_keras.layers.Im2colConv2D`` (one matmul);
#: same weights, same function.
FC6_IMPLEMENTATIONS = {"conv": keras.layers.Conv2D, "im2col": Im2colConv2D}
#: How the 2x2 max poolings are computed: ``keras.layers.MaxPooling2D`` or
#: ``fcn_keras.layers.ReshapeMaxPooling2D`` (a reshape and a max); same outputs.
POOL_IMPLEMENTATIONS = {"pool": keras.layers.MaxPooling2D, "reshape": ReshapeMaxPooling2D}


def build_fcn(
    variant: str = "8s",
    num_classes: int = NUM_CLASSES,
    *,
    weights: str | os.PathLike | keras.Model | None = None,
    preprocessing: str = "auto",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    at_once: bool = False,
    dropout: float = 0.5,
    fc_units: int = arch.FC_UNITS,
    learn_final_upsampling: bool = False,
    learn_skip_upsampling: bool = True,
    geometry: str = "reference",
    fc6_implementation: str = "im2col",
    pool_implementation: str = "pool",
    name: str | None = None,
) -> keras.Model:
    """Builds an FCN-VGG16.

    Args:
        variant: ``"32s"``, ``"16s"`` or ``"8s"``: the stride of the finest prediction fused.
        num_classes: number of output classes (>= 2), 21 for PASCAL VOC.
        weights: backbone initialisation. ``None``: random. ``"imagenet"``: keras.applications'
            VGG16 with fc1/fc2 (downloaded; needs internet). A path: a Keras VGG16 weights file,
            with or without the top; without it fc6/fc7 start from scratch (logged). A
            ``keras.Model``: a VGG16 to copy from (then ``preprocessing`` must be given). Score
            layers always start at zero.
        preprocessing: input normalisation built into the model: ``"caffe"``, ``"torch"``,
            ``"caffe_fcn"`` (the authors' trained nets, see ``fcn_keras.caffe_import``), or
            ``"auto"`` (chosen from ``weights``, see ``fcn_keras.backbone``; not for a
            ``keras.Model``). Callers always pass plain RGB in 0..255.
        input_shape: ``(H, W, 3)``; ``None`` sides accept any size (dynamic crops). With both
            sides fixed, crops are ``Cropping2D`` layers.
        at_once: the TPAMI "at-once" FCN-8s, which scales pool4 by 0.01 and pool3 by 1e-4
            before scoring them (only for the skip variants).
        dropout: dropout rate after fc6 and fc7 (0.5 in the paper).
        fc_units: channels of fc6/fc7 (4096 in VGG16; smaller values only for quick tests,
            they cannot hold ImageNet fc weights).
        learn_final_upsampling: train the last deconvolution too. The reference nets keep it a
            fixed bilinear interpolation.
        learn_skip_upsampling: train the 2x skip upsamplings (``upscore2``, ``upscore_pool4``),
            bilinear at the start: the paper's text ("initialized to bilinear interpolation,
            but allowed to be learned", CVPR 2015 Section 4.2). The authors' released nets
            (``voc-fcn*/net.py``) fix them (``lr_mult: 0``): ``False``.
        geometry: ``"reference"``: the authors' nets (100-pixel input padding, valid conv1_1
            and fc6, crops 19; 5, 27; 5, 9, 31). ``"same"``: no input padding, size-preserving
            convolutions and deconvolutions, 0.6x the compute at 500x500; not the paper's
            nets (see ``fcn_keras.architecture``).
        fc6_implementation: ``"im2col"`` (``Im2colConv2D``: the 7x7 convolution as one matmul
            of the shifted windows) or ``"conv"`` (``Conv2D``). Same weights and outputs; im2col
            has a 49x larger intermediate and on an H200 a 12x faster fc6 forward+backward
            (FCN-8s trains 11 % faster), also faster on CPUs except TensorFlow's CPU forward
            (``benchmarks/fc6.py``). Models built before this choice existed have ``Conv2D``.
        pool_implementation: ``"pool"`` (``MaxPooling2D``) or ``"reshape"``
            (``ReshapeMaxPooling2D``: a reshape and a max, whose gradient needs no
            select-and-scatter; same outputs, see ``benchmarks/train_step.py``).
        name: model name, default ``"fcn{variant}"`` (``"fcn8s_at_once"`` when at once).

    Returns:
        A ``keras.Model`` mapping RGB images ``[B, H, W, 3]`` (uint8 or float, 0..255) to
        float32 logits ``[B, H, W, num_classes]`` aligned pixel for pixel with the input.

    Raises:
        ValueError: a bad value of any argument, named with the value received (among them
            ``at_once`` for FCN-32s, ``fc_units`` other than 4096 with ``"imagenet"``,
            ``preprocessing="auto"`` with a ``keras.Model`` or a file of unknown origin), or
            weights that do not fit (named, with the expected and received shapes).
        FileNotFoundError: ``weights`` names a file that does not exist.
    """
    # --- Arguments -------------------------------------------------------------------------
    arch.check_variant(variant)
    geo = arch.get_geometry(geometry)
    num_classes = check_int("num_classes", num_classes, 2)
    # A tuple or list first: None or a number has no len() (a TypeError naming no argument).
    shaped = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and is_integer(input_shape[2])
    if not shaped or input_shape[2] != 3 or any(
        side is not None and (not is_integer(side) or side < 1) for side in input_shape[:2]
    ):
        raise ValueError(
            f"input_shape must be (height, width, 3) for RGB images, each side None or >= 1. "
            f"Received: input_shape={input_shape!r}"
        )
    fc_units = check_int("fc_units", fc_units, 1)
    if weights == "imagenet" and fc_units != 4096:  # checked before the 528 MB download
        raise ValueError(
            "fc_units must be 4096 with weights='imagenet', whose fc6/fc7 (VGG16's fc1/fc2) have 4096 units. "
            f"Received: fc_units={fc_units}"
        )
    check_choice("fc6_implementation", fc6_implementation, FC6_IMPLEMENTATIONS)
    check_choice("pool_implementation", pool_implementation, POOL_IMPLEMENTATIONS)
    for flag, value in (("at_once", at_once), ("learn_final_upsampling", learn_final_upsampling),
                        ("learn_skip_upsampling", learn_skip_upsampling)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{flag} must be True or False. Received: {flag}={value!r}")
    if at_once and variant == "32s":
        raise ValueError("at_once=True scales the skip inputs; it needs variant '16s' or '8s'")
    if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1). Received: dropout={dropout!r}")
    if not (weights is None or isinstance(weights, (str, os.PathLike, keras.Model))):  # "imagenet" is a str
        raise ValueError(f"weights must be None, 'imagenet', the path of a weights file or a keras.Model. "
                         f"Received: weights={weights!r}")
    if isinstance(weights, keras.Model):
        if preprocessing == "auto":  # A model does not say how its training inputs were normalised.
            raise ValueError(
                f"preprocessing must be one of {PREPROCESSING_MODES} when weights is a keras.Model: which input "
                "normalisation its weights expect cannot be told from the model (keras.applications.VGG16("
                "weights='imagenet') expects 'caffe'). Received: preprocessing='auto'"
            )
        vgg = weights
        mode = resolve_preprocessing(None, preprocessing)
    else:
        # What the file holds is checked first: a file that is no VGG16 says so, whatever its origin.
        vgg = None if weights is None else load_vgg16(weights)
        mode = resolve_preprocessing(weights, preprocessing)
    if name is None:
        name = f"fcn{variant}" + ("_at_once" if at_once else "")

    static = input_shape[0] is not None and input_shape[1] is not None

    def crop(layer_name: str, x, reference, offset: int, dtype: str | None = None):
        """Caffe's Crop: ``Cropping2D`` when sizes are static, else ``CropToReference``."""
        if not static:
            return CropToReference(offset, name=layer_name, dtype=dtype)([x, reference])
        amounts = [
            arch.static_crop(offset, x.shape[1 + axis], reference.shape[1 + axis]) for axis in (0, 1)
        ]
        return keras.layers.Cropping2D(amounts, name=layer_name, dtype=dtype)(x)

    offsets = arch.crop_offsets(variant, geometry)
    deconv_padding = "same" if geo.same_deconv else "valid"

    # --- Trunk: VGG16 ---------------------------------------------------------------------
    inputs = keras.Input(shape=input_shape, name="image")
    # Normalisation in float32 whatever the dtype policy; conv1_1 casts to the compute dtype.
    x = Preprocess(mode, name="preprocess", dtype="float32")(inputs)
    if geo.input_padding:
        # Reference: 100 px of zeros (= the mean colour after normalisation), valid conv1_1.
        x = keras.layers.ZeroPadding2D(geo.input_padding, name="input_padding")(x)
    pools = {}
    for block, (filters, convs) in enumerate(arch.VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            first = block == 1 and conv == 1
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="valid" if first and not geo.conv1_1_pad else "same",
                activation="relu",
                name=f"block{block}_conv{conv}",
            )(x)
        # Ceil-mode 2x2 pooling (Caffe): "same" pads the odd last row/column. Stride 2**block.
        x = POOL_IMPLEMENTATIONS[pool_implementation](2, strides=2, padding="same", name=arch.pool_name(block))(x)
        pools[block] = x

    # --- Convolutionalized classifier: fc6 (7x7), fc7 (1x1), stride 32 --------------------
    fc6_padding = "same" if geo.fc6_pad else "valid"
    x = FC6_IMPLEMENTATIONS[fc6_implementation](
        fc_units, arch.FC6_KERNEL, padding=fc6_padding, activation="relu", name="fc6"
    )(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    score = _score_layer(num_classes, "score_fr")(x)

    # --- Skip architecture: 2x upsampling, score the pool, crop, fuse ----------------------
    for index, block in enumerate(arch.SKIPS[variant]):
        upscore = Deconvolution(
            num_classes,
            arch.SKIP_UPSAMPLE_KERNEL,
            strides=arch.SKIP_UPSAMPLE_STRIDE,
            padding=deconv_padding,
            use_bias=False,
            kernel_initializer=BilinearUpsampling(),
            trainable=learn_skip_upsampling,
            name=arch.skip_upsample_name(variant, index),
        )(score)
        pool = pools[block]
        if at_once:
            pool = keras.layers.Rescaling(
                arch.AT_ONCE_SCALES[block], name=arch.scale_name(block)
            )(pool)
        pool_score = _score_layer(num_classes, arch.score_name(block))(pool)
        crop_name = arch.skip_crop_name(variant, index, geometry)
        if arch.crops_pool_score(geometry):
            pool_score = crop(crop_name, pool_score, upscore, offsets[crop_name])
        else:
            upscore = crop(crop_name, upscore, pool_score, offsets[crop_name])
        score = keras.layers.Add(name=arch.fuse_name(block))([upscore, pool_score])

    # --- Final upsampling to the input's resolution, cropped to the input -------------------
    stride = arch.output_stride(variant)
    upscore = Deconvolution(
        num_classes,
        arch.final_upsample_kernel(variant),
        strides=stride,
        padding=deconv_padding,
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=learn_final_upsampling,
        name=arch.final_upsample_name(variant),
    )(score)
    # Logits leave the model in float32 whatever the dtype policy (mixed precision).
    outputs = crop("score", upscore, inputs, offsets["score"], dtype="float32")
    model = keras.Model(inputs, outputs, name=name)

    # --- Backbone weights -------------------------------------------------------------------
    if vgg is not None:
        copied = transplant_vgg16(model, vgg)
        if "fc6" not in copied:
            logger.warning(
                "the VGG16 weights have no fc1/fc2: fc6 and fc7 of %s start from scratch", name
            )
    return model


def _score_layer(num_classes: int, name: str) -> keras.layers.Conv2D:
    """A 1x1 class-scoring convolution, zero-initialised as in the reference nets."""
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)
