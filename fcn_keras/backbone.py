"""Loading ImageNet VGG16 weights and knowing which input normalisation they expect.

Two kinds of genuine VGG16 weights are in use and they expect different inputs:

- ``keras.applications.VGG16(weights="imagenet")`` (converted from the authors' Caffe model):
  BGR, mean-subtracted ("caffe").
- torchvision's ``vgg16-397923af.pth`` converted to Keras (such as
  ``../shared/weights/vgg16_imagenet_notop_torchvision.weights.h5``): RGB / 255, then
  per-channel mean/std ("torch").

``build_fcn`` puts the matching normalisation inside the model; this module tells which one a
weights source needs, from a table of known files, or from the caller.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import keras

from fcn_keras.checks import check_choice
from fcn_keras.constants import PREPROCESSING_MODES
from fcn_keras.files import file_digests

logger = logging.getLogger(__name__)

#: Digests of VGG16 weight files whose origin is known (md5 for the files keras.applications
#: downloads, as its source lists them; sha256 for the shared torchvision conversion).
KNOWN_WEIGHT_FILES: dict[str, str] = {
    # keras.applications vgg16_weights_tf_dim_ordering_tf_kernels.h5 (with top).
    "64373286793e3c8b2b4e3219cbf3544b": "caffe",
    # keras.applications vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.
    "6d6bbae143d832006294945121d1f1fc": "caffe",
    # ../shared/weights/vgg16_imagenet_notop_torchvision.weights.h5.
    "d2d521d9b9fa12ed44d8c1b25cf361b0595bd25e5c3504e8c4027aa5cb5867e6": "torch",
}

def resolve_preprocessing(weights: str | os.PathLike | None, preprocessing: str = "auto") -> str:
    """The input normalisation a model built on ``weights`` needs.

    Args:
        weights: ``None`` (random initialisation), ``"imagenet"`` or a path to a weights file.
        preprocessing: one of ``PREPROCESSING_MODES``, or ``"auto"`` to infer it: ``"caffe"`` for
            ``None`` and ``"imagenet"``, the known origin of a file listed in
            ``KNOWN_WEIGHT_FILES``.

    Returns:
        One of ``PREPROCESSING_MODES``.

    Raises:
        ValueError: unknown ``preprocessing``; ``"auto"`` for a file of unknown origin; an explicit
            ``preprocessing`` of the other family than the one ``"imagenet"`` or a known file was
            trained with (``"torch"`` for Caffe weights; ``"caffe"`` or ``"caffe_fcn"`` for torch's);
            ``weights`` is a folder.
        FileNotFoundError: ``weights`` is a path where nothing is.
    """
    check_choice("preprocessing", preprocessing, ("auto",) + PREPROCESSING_MODES)
    if weights is None:
        return "caffe" if preprocessing == "auto" else preprocessing
    if weights == "imagenet":
        known, source = "caffe", "weights='imagenet' (keras.applications' VGG16)"
    else:
        path = _weights_file(weights)
        digests = file_digests(path, "md5", "sha256")
        known = next((KNOWN_WEIGHT_FILES[d] for d in digests if d in KNOWN_WEIGHT_FILES), None)
        source = f"the weights in {str(path)!r} (a known file of fcn_keras.backbone.KNOWN_WEIGHT_FILES)"
    if known is None:
        if preprocessing != "auto":
            return preprocessing
        raise ValueError(
            f"cannot tell which input normalisation the weights in {str(path)!r} expect (not one of the "
            "known files of fcn_keras.backbone.KNOWN_WEIGHT_FILES): pass preprocessing='caffe' "
            "(--preprocessing=caffe; keras.applications / Caffe ImageNet weights: BGR, mean subtracted) or "
            "preprocessing='torch' (--preprocessing=torch; torchvision weights: RGB / 255, mean/std)"
        )
    if preprocessing == "auto":
        return known
    # 'caffe_fcn' (the authors' VOC mean; they fine-tuned Caffe's ImageNet VGG16) fits Caffe weights.
    if (preprocessing == "torch") != (known == "torch"):
        raise ValueError(
            f"{source} expect preprocessing={known!r}, not preprocessing={preprocessing!r}: the "
            "model would feed them inputs normalised unlike those they were trained on. Leave it 'auto'"
        )
    return preprocessing


def _weights_file(weights: str | os.PathLike) -> Path:
    """``weights`` as a ``Path``, checked to be a file (a FileNotFoundError, or a ValueError for a folder)."""
    path = Path(weights)
    if path.is_dir():
        raise ValueError(f"weights file {str(path)!r} is a folder: give the weights file itself (.h5 or .weights.h5)")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    return path


def weights_file_has_top(path: str | os.PathLike) -> bool:
    """Whether a Keras VGG16 weights file holds the fully connected layers (fc1/fc2).

    Understands the Keras 3 ``.weights.h5`` format (variables stored per layer under
    ``layers/``) and the legacy Keras 2 HDF5 format (``layer_names`` attribute), which
    keras.applications downloads.
    """
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
                return "fc1" in names
            if "layers" in f:
                return any(name.startswith("dense") or name == "fc1" for name in f["layers"])
    except OSError as error:
        raise ValueError(f"weights file {str(path)!r} is not an HDF5 file: {error}") from error
    raise ValueError(f"weights file {str(path)!r} is not a Keras weights file")


def load_vgg16(weights: str | os.PathLike) -> keras.Model:
    """A ``keras.applications.VGG16`` holding the given ImageNet weights.

    Args:
        weights: ``"imagenet"`` (downloads the full model with fc1/fc2, needs internet) or a
            path to a Keras VGG16 weights file, with or without the top.

    Returns:
        A VGG16 model; with ``fc1``/``fc2`` if the weights have them.

    Raises:
        ValueError: the file does not hold VGG16 weights (names the file and Keras' reason), or
            ``weights`` is a folder.
        FileNotFoundError: ``weights`` is a path where nothing is.
    """
    if weights == "imagenet":
        return keras.applications.VGG16(include_top=True, weights="imagenet")
    path = _weights_file(weights)
    include_top = weights_file_has_top(path)
    vgg = keras.applications.VGG16(include_top=include_top, weights=None)
    try:
        vgg.load_weights(str(path))
    except Exception as error:  # Keras raises ValueError/KeyError/TypeError by format.
        reason = str(error)  # Keras may print whole weight tensors: keep the start.
        reason = reason if len(reason) <= 400 else reason[:400] + " ..."
        raise ValueError(
            f"weights file {str(path)!r} does not hold VGG16 weights "
            f"(include_top={include_top}): {reason}"
        ) from error
    return vgg
