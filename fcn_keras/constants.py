"""Constants defined once for the whole project.

Class names and palette of PASCAL VOC, the ignore label, the input normalisation of each
backbone-weight origin, and the names of the FCN variants. Every other module imports these
instead of repeating them.
"""

from __future__ import annotations

import numpy as np

# --- Dataset ----------------------------------------------------------------------------------

#: The 21 PASCAL VOC classes in label order (index 0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

NUM_CLASSES: int = len(VOC_CLASSES)

#: The VOCdevkit layout: ``<voc_root>/VOC2012/`` holds the images, the palette masks, SBD's
#: grayscale "aug" masks (when added) and the segmentation split lists (``<split>.txt``).
VOC_DIR: str = "VOC2012"
VOC_IMAGES_DIR: str = "JPEGImages"
VOC_MASKS_DIR: str = "SegmentationClass"
VOC_AUG_MASKS_DIR: str = "SegmentationClassAug"
VOC_LISTS_DIR: str = "ImageSets/Segmentation"

#: Label value of "void" pixels (object borders, padding): excluded from loss and metrics.
IGNORE_LABEL: int = 255


def _voc_palette() -> np.ndarray:
    """The VOC colour map: class i's RGB bits come from i's bits, 3 at a time (VOCdevkit)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (label & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette


#: uint8 [256, 3]: the palette of VOC's SegmentationClass PNGs (255 is the void colour).
VOC_PALETTE: np.ndarray = _voc_palette()
VOC_PALETTE.setflags(write=False)


def check_palette(palette: np.ndarray) -> np.ndarray:
    """``palette`` as an array, checked to be uint8 ``[256, 3]`` (a colour per label value, like
    ``VOC_PALETTE``)."""
    palette = np.asarray(palette)
    if palette.shape != (256, 3) or palette.dtype != np.uint8:
        raise ValueError(f"palette must be uint8 [256, 3] (a colour per label value). Received: shape {palette.shape}, "
                         f"dtype {palette.dtype}")
    return palette

# --- Input normalisation, by origin of the backbone weights -----------------------------------
# Every model takes plain RGB in 0..255; the model's first layer applies one of these.

#: Caffe / keras.applications "imagenet" VGG16: BGR order, mean subtracted, no scaling.
CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)

#: The authors' trained FCNs (their .caffemodel files, see fcn_keras.caffe_import): BGR minus the
#: mean their data layers subtract (voc_layers.py / infer.py), which differs from VGG's by about 1 or less.
FCN_CAFFE_BGR_MEAN: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

#: torchvision VGG16 (e.g. ../shared/weights): RGB scaled to [0, 1], then (x - mean) / std.
TORCH_RGB_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
TORCH_RGB_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The BGR mean-subtracting modes and their means.
BGR_MEANS: dict[str, tuple[float, float, float]] = {"caffe": CAFFE_BGR_MEAN, "caffe_fcn": FCN_CAFFE_BGR_MEAN}

PREPROCESSING_MODES: tuple[str, ...] = ("caffe", "torch", "caffe_fcn")

#: uint8 RGB fill of image padding (crop windows leaving the image, batches of unequal sizes):
#: the ImageNet mean colour (123.68, 116.78, 103.94) to whole numbers (green down, not to 117:
#: torch's mean green is 116.28), which the normalisations above map to about 0 (caffe: within
#: 0.8; caffe_fcn: within 1.4; torch: within 0.01, which 117 would miss). Padded pixels then
#: look to the network like the zeros its convolutions pad with, the reference geometry's 100
#: pixels included, instead of a black frame. Label padding is always IGNORE_LABEL.
PAD_RGB: tuple[int, int, int] = (124, 116, 104)

#: Random scale factors of the training crops (``data.pipeline.train_dataset``, ``--crop_size``).
TRAIN_SCALE_RANGE: tuple[float, float] = (0.5, 2.0)

#: Records in the training pipeline's shuffle buffer (``train_dataset``, ``--shuffle_buffer``):
#: encoded, ~91 KB each for VOC (~190 MB of host memory), shuffled after the interleave of up to
#: 8 shards. Shards hold the list in order: 256 left a 1,464-record split (2 shards) in nearly
#: list order (rank correlation 0.76 of stream and shard position; 2,048: -0.01).
DEFAULT_SHUFFLE_BUFFER = 2048

# --- Files ---------------------------------------------------------------------------------------

#: The first bytes of every JPEG file (SOI marker, then a marker's 0xFF): how the converter, the
#: predict CLI (``fcn_keras.io.read_image``) and ``tf.io.decode_image`` recognise a JPEG,
#: whatever the file's name.
JPEG_SIGNATURE: bytes = b"\xff\xd8\xff"

#: The first bytes of every PNG file.
PNG_SIGNATURE: bytes = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(head: bytes) -> int | None:
    """The bit depth per sample in a PNG file's IHDR chunk (byte 24 of the file), or None if
    ``head`` (the file's first bytes) is not a PNG's."""
    return head[24] if len(head) > 24 and head.startswith(PNG_SIGNATURE) else None

# --- Model family -----------------------------------------------------------------------------

VARIANTS: tuple[str, ...] = ("32s", "16s", "8s")
