"""SavedModel export for TensorFlow Serving.

    python -m fcn_keras.export --model=runs/fcn8s/best.keras --export_dir=serving [--name=fcn8s]
        [--version=1] [--probabilities | --logits] [--overwrite] [--class_names=...] [--label_colours=...]

writes ``<export_dir>/<name>/<version>/`` (TF Serving's layout: a base folder per model, one
numbered folder per version) holding a ``tf.Module`` whose ``tf.function`` signatures wrap the
trained FCN. Preprocessing is the model's first layer and the argmax runs inside the graph, so
clients send raw RGB (or encoded image files) and receive uint8 label maps: 21 float logits per
pixel never leave the device unless asked for at export time.

Signatures (see docs/serving.md):

- ``serving_default``: ``images`` uint8 ``[N, H, W, 3]`` → ``labels`` uint8 ``[N, H, W]``, plus
  ``probabilities`` (softmax) or ``logits`` float32 ``[N, H, W, C]`` when exported with
  ``--probabilities`` / ``--logits``.
- ``predict_image_bytes``: ``image_bytes`` string ``[N]`` (encoded JPEG/PNG/BMP/GIF, what TF
  Serving's REST API sends as ``{"b64": ...}``) → ``labels`` uint8 ``[N, Hmax, Wmax]``
  (each image is decoded and segmented on its own, so sizes may differ within a request; label
  maps smaller than the largest are padded with 255 = void), ``heights`` / ``widths`` int32
  ``[N]`` (each image's own size) and ``label_png_bytes`` string ``[N]`` (the label map in the
  VOC colours, or the dataset's own with ``--label_colours``, as an RGB PNG of the image's own
  size; TF Serving returns ``*_bytes`` outputs as ``{"b64": ...}``).

Beside the SavedModel, ``assets.extra/class_names.txt`` names the classes, one per line in label
order (TF Serving ignores the folder; clients map ``labels`` to names with it), and, for an
FCN-VGG16 of ``build_fcn``, ``assets.extra/tile_context.txt`` holds the context (pixels) a tile
needs, so that ``fcn_keras.predict --tile_size`` can segment large images with the SavedModel.

The export runs under the TensorFlow backend; a ``.keras`` file trained under JAX loads and
exports the same way (Keras files are backend-independent).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fcn_keras.checks import check_int
from fcn_keras.console import run_cli, usage_error
from fcn_keras.constants import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE, check_palette
from fcn_keras.data import voc
from fcn_keras.files import write_text_atomic
from fcn_keras.inference import TILE_CONTEXT, ArgmaxLabels, check_tileable
from fcn_keras.io import check_fcn, decode_image_tensor, load_fcn, run_class_names

# --- Names of the serving interface ---------------------------------------------------------

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "predict_image_bytes"
#: What ``serving_default`` may return besides ``labels``, chosen at export time.
EXTRA_OUTPUTS: tuple[str, ...] = ("probabilities", "logits")
#: The class names beside the SavedModel, relative to the version folder.
CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")
#: ``inference.TILE_CONTEXT`` beside the SavedModel of an FCN-VGG16 (the reach of other models is
#: unknown, and they get no file: tiled prediction refuses them).
TILE_CONTEXT_FILE = os.path.join("assets.extra", "tile_context.txt")


# --- The serving module -----------------------------------------------------------------------


def _require_tensorflow_backend() -> None:
    """Raises a RuntimeError saying what to do unless Keras runs on TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "SavedModel export needs the TensorFlow backend. Received: KERAS_BACKEND="
            f"{keras.backend.backend()!r}; run the export with KERAS_BACKEND=tensorflow (a model "
            "trained under JAX exports fine)"
        )


class FCNServingModule(tf.Module):
    """The ``tf.Module`` whose signatures serve an FCN (see the module docstring).

    Args:
        model: an FCN (RGB ``[B, H, W, 3]`` → logits ``[B, H, W, C]``) under the TF backend.
        extra_output: ``None``, ``"probabilities"`` or ``"logits"``: also returned by
            ``serving_default``.
        palette: uint8 ``[256, 3]``, the colours of ``label_png_bytes``.
    """

    def __init__(self, model: keras.Model, extra_output: str | None = None, palette: np.ndarray = VOC_PALETTE) -> None:
        _require_tensorflow_backend()
        check_fcn(model, f"model {model.name!r}")
        if extra_output not in (None, *EXTRA_OUTPUTS):
            raise ValueError(
                f"extra_output must be None or one of {EXTRA_OUTPUTS}. Received: extra_output={extra_output!r}"
            )
        super().__init__(name="fcn_serving")
        self.model = model  # Tracks the variables.
        self.extra_output = extra_output
        self.palette = tf.constant(check_palette(palette))
        self._argmax = ArgmaxLabels(name="labels")
        height, width = model.inputs[0].shape[1:3]
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")],
        )
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The concrete functions by signature name, for ``tf.saved_model.save``."""
        return {
            SERVING_SIGNATURE: self.serve_images.get_concrete_function(),
            BYTES_SIGNATURE: self.serve_image_bytes.get_concrete_function(),
        }

    def _serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 ``[N, H, W, 3]`` → ``{"labels": uint8 [N, H, W], [extra: float32 [N, H, W, C]]}``."""
        logits = self.model(images, training=False)
        outputs = {"labels": self._argmax(logits)}
        if self.extra_output == "probabilities":
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        elif self.extra_output == "logits":
            outputs["logits"] = logits
        return outputs

    def _serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """string ``[N]`` → labels uint8 ``[N, Hmax, Wmax]`` (255-padded), heights, widths int32
        ``[N]``, label_png_bytes string ``[N]``. One image at a time, so sizes may differ."""

        def segment_one(encoded):
            image = decode_image_tensor(encoded)
            for axis, (side, size) in enumerate(zip(("height", "width"), self.model.inputs[0].shape[1:3])):
                if size is not None:  # A model built for one size (build_fcn's input_shape) takes only it.
                    tf.debugging.assert_equal(
                        tf.shape(image)[axis], size,
                        message=f"this model was exported from one built for images of {side} {size} only "
                                f"(input_shape {tuple(self.model.inputs[0].shape[1:])}); export a model built with "
                                "input_shape=(None, None, 3) to serve images of any size",
                    )
            labels = self._argmax(self.model(image[tf.newaxis], training=False))[0]
            png = tf.io.encode_png(tf.gather(self.palette, tf.cast(labels, tf.int32)))
            size = tf.shape(labels)
            return tf.RaggedTensor.from_tensor(labels), png, size[0], size[1]

        labels, png, heights, widths = tf.map_fn(
            segment_one,
            image_bytes,
            fn_output_signature=(
                tf.RaggedTensorSpec([None, None], tf.uint8, ragged_rank=1),
                tf.TensorSpec([], tf.string),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32),
            ),
        )
        return {
            "labels": labels.to_tensor(default_value=IGNORE_LABEL),
            "heights": heights,
            "widths": widths,
            "label_png_bytes": png,
        }


# --- Writing the SavedModel ---------------------------------------------------------------------


def export_saved_model(
    model: keras.Model | str | os.PathLike,
    export_dir: str | os.PathLike,
    *,
    name: str = "fcn8s",
    version: int = 1,
    extra_output: str | None = None,
    overwrite: bool = False,
    class_names: Sequence[str] | None = None,
    label_colours: str | os.PathLike | None = None,
) -> Path:
    """Exports an FCN as a SavedModel in TF Serving's layout, atomically.

    The SavedModel is written to a hidden temporary folder beside the version folder (TF
    Serving ignores names that are not numbers) and renamed when complete, so a server watching
    ``<export_dir>/<name>`` never loads a half-written version.

    Args:
        model: a ``keras.Model`` FCN, the path of a ``.keras`` file, or a run folder of
            ``fcn_keras.train`` (its ``best.keras``, else ``last.keras``; ``fcn_keras.io.load_fcn``).
        export_dir: the model base folder's parent (TF Serving's ``--model_base_path`` is
            ``<export_dir>/<name>``).
        name: the model name (a folder name).
        version: the version number (>= 1), a folder name.
        extra_output: ``None``, ``"probabilities"`` or ``"logits"``: also returned by
            ``serving_default`` (float32 ``[N, H, W, C]``).
        overwrite: replace an existing version folder (or file; a link to one stored elsewhere is
            replaced by the new folder, its target kept).
        class_names: the ``C`` names written to ``CLASS_NAMES_FILE``. ``None``: those the
            training run recorded (``model`` a run folder or a ``.keras`` file in one), else
            VOC's for a 21-class model, else no file.
        label_colours: the colours of ``label_png_bytes``: ``"voc"`` (``None``: the same), or
            the colour map file the dataset's masks were converted with
            (``fcn_keras.data.voc.read_label_colours``, its names those of ``class_names``).

    Returns:
        The version folder ``<export_dir>/<name>/<version>``.

    Raises:
        FileExistsError: the version folder exists (or appears while exporting) and ``overwrite`` is False.
        FileNotFoundError, ValueError: a missing or non-FCN model, bad name or version, or
            ``class_names`` not one per class, or a bad ``label_colours`` file.
    """
    _require_tensorflow_backend()
    version = check_int("version", version, 1)
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"name must be a plain folder name. Received: name={name!r}")
    version_dir = Path(export_dir) / name / str(version)
    for folder in (Path(export_dir), version_dir.parent):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file, not a folder: choose another --export_dir or --name")
    if os.path.lexists(version_dir) and not overwrite:
        raise FileExistsError(
            f"{version_dir} already exists; pass --overwrite to replace it or choose another --version"
        )
    names_from = "class_names"
    if not isinstance(model, keras.Model):
        if class_names is None:
            class_names, names_from = run_class_names(model), f"the class names its training run recorded ({model})"
        model = load_fcn(model)
    num_classes = int(check_fcn(model, f"model {model.name!r}").outputs[0].shape[-1])
    if class_names is None and num_classes == len(VOC_CLASSES):
        class_names = VOC_CLASSES
    if class_names is not None and len(class_names) != num_classes:
        hint = "" if names_from == "class_names" else " (pass --class_names)"
        raise ValueError(f"{names_from} must name the model's {num_classes} classes{hint}. Received: "
                         f"{len(class_names)} names ({voc.abbreviate(class_names)})")
    palette = VOC_PALETTE if label_colours is None else voc.read_label_colours(label_colours, class_names).palette
    serving = FCNServingModule(model, extra_output, palette)

    version_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = _hidden_sibling(version_dir, "tmp")
    try:
        tf.saved_model.save(serving, str(temp_dir), signatures=serving.signatures())
        if class_names is not None:
            write_text_atomic(temp_dir / CLASS_NAMES_FILE, "".join(f"{name}\n" for name in class_names))
        if _tileable(model):
            write_text_atomic(temp_dir / TILE_CONTEXT_FILE, f"{TILE_CONTEXT}\n")
        if os.path.lexists(version_dir) and overwrite:  # Move the old version aside, swap, then delete it.
            old_dir = _hidden_sibling(version_dir, "old")
            os.replace(version_dir, old_dir)
            try:
                os.replace(temp_dir, version_dir)
            except OSError:
                os.replace(old_dir, version_dir)
                raise
            if old_dir.is_dir() and not old_dir.is_symlink():
                shutil.rmtree(old_dir)
            else:  # A link (to a version stored elsewhere, which is kept) or a file.
                old_dir.unlink()
        else:
            try:  # Fails if another export made a (non-empty) version folder meanwhile: not replaced.
                os.rename(temp_dir, version_dir)
            except OSError as error:
                if os.path.lexists(version_dir):
                    raise FileExistsError(f"{version_dir} appeared while exporting (another export?) and was "
                                          "left as it is; pass --overwrite to replace it") from error
                raise
    finally:
        if temp_dir.exists():
            shutil.rmtree(temp_dir)
    return version_dir


def _tileable(model: keras.Model) -> bool:
    try:
        check_tileable(model)
    except ValueError:
        return False
    return True


def _hidden_sibling(path: Path, kind: str) -> Path:
    """A new, unique, non-numeric (so TF Serving ignores it) folder name beside ``path``."""
    return path.with_name(f".{kind}-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# --- Command line ------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a program, so modules import side-effect free)."""
    flags.DEFINE_string("model", None, "Trained FCN: a .keras file from build_fcn / fcn_keras.train (TF or JAX backend), "
                        "a run folder of fcn_keras.train (its best.keras, else last.keras), or the authors' .caffemodel.")
    flags.DEFINE_string("export_dir", None, "Base folder; the SavedModel goes to <export_dir>/<name>/<version>/.")
    flags.DEFINE_string("name", "fcn8s", "Model name: the folder under --export_dir and TF Serving's --model_name.")
    flags.DEFINE_integer("version", 1, "Version number (>= 1): the folder under <export_dir>/<name>/.", lower_bound=1)
    flags.DEFINE_boolean("probabilities", False, "serving_default also returns float32 softmax probabilities [N, H, W, C].")
    flags.DEFINE_boolean("logits", False, "serving_default also returns float32 logits [N, H, W, C].")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing <export_dir>/<name>/<version>/ folder.")
    flags.DEFINE_string("class_names", None, f"Class names written to <version>/{CLASS_NAMES_FILE}: a file with one "
                        "per line or a comma-separated list. Default: those the training run of --model recorded in "
                        "its config.json, else VOC's for a 21-class model, else no file.")
    flags.DEFINE_string("label_colours", None, "Colours of the label PNGs that predict_image_bytes returns: the colour map "
                        "the dataset's masks were converted with (a file of '<label> R G B' lines), or 'voc' (default).")
    flags.mark_flags_as_required(["model", "export_dir"])
    flags.register_multi_flags_validator(
        ["probabilities", "logits"],
        lambda values: not (values["probabilities"] and values["logits"]),
        message="--probabilities and --logits are exclusive: serving_default returns at most one of them",
    )


def main(argv: list[str]) -> int:
    """Runs the export for the parsed flags; returns the exit status."""
    if len(argv) > 1:
        return usage_error("fcn_keras.export", f"unexpected arguments: {argv[1:]}")
    extra = "probabilities" if FLAGS.probabilities else "logits" if FLAGS.logits else None
    try:
        version_dir = export_saved_model(
            FLAGS.model,
            FLAGS.export_dir,
            name=FLAGS.name,
            version=FLAGS.version,
            extra_output=extra,
            overwrite=FLAGS.overwrite,
            class_names=None if FLAGS.class_names is None else voc.read_class_names(FLAGS.class_names),
            label_colours=FLAGS.label_colours,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:  # Bad input: nothing exported.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as error:  # E.g. no permission to write --export_dir.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {FLAGS.model} to {version_dir}")
    names = version_dir / CLASS_NAMES_FILE
    print(f"class names: {names}" if names.is_file() else "class names: none known (pass --class_names to write them)")
    print(f"serve it: tensorflow_model_server --rest_api_port=8501 --model_name={FLAGS.name} "
          f"--model_base_path={version_dir.parent.resolve()}")
    return 0


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
