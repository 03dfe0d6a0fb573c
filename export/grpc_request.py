"""gRPC client for an FCN served by TensorFlow Serving (tensorflow-serving-api).

    python export/grpc_request.py --server=localhost:8500 --model_name=fcn8s photo.jpg other.png

Builds a ``PredictRequest`` for the ``predict_image_bytes`` signature: one DT_STRING tensor
``image_bytes`` of shape [N] holding the image files' bytes unchanged (no base64 over gRPC).
The response's ``labels`` (uint8 [N, Hmax, Wmax], 255 beyond each image), ``heights``,
``widths`` and ``label_png_bytes`` tensors are read with ``tf.make_ndarray``.

Errors are one line on stderr and exit status 1: no TF Serving answering at ``--server`` (the
message names the address), an error status from the server (with its message), a reply without
the bytes signature's outputs or with outputs for another number of images, an unreadable image
file; status 2 for a ``--timeout`` <= 0 or no image named.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

BYTES_SIGNATURE = "predict_image_bytes"
BYTES_INPUT = "image_bytes"

# --- Request and response ----------------------------------------------------------------------


def build_predict_request(
    paths: Sequence[str | os.PathLike],
    model_name: str = "fcn8s",
    signature_name: str = BYTES_SIGNATURE,
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` carrying encoded image files.

    Args:
        paths: JPEG/PNG/BMP/GIF files, sent unchanged.
        model_name: the served model's name.
        signature_name: the bytes signature of the exported model.
        version: a model version, or None for the latest.

    Returns:
        The request, with ``inputs["image_bytes"]`` a DT_STRING tensor of shape [N].
    """
    if not paths:
        raise ValueError("paths must name at least one image file")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    encoded = [Path(path).read_bytes() for path in paths]
    request.inputs[BYTES_INPUT].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string, shape=[len(encoded)]))
    return request


def parse_predict_response(response: predict_pb2.PredictResponse, num_images: int | None = None) -> list[dict]:
    """Reads a ``PredictResponse`` of the bytes signature.

    Args:
        response: the server's reply.
        num_images: the number of images sent, checked against each output's (``None``: not checked).

    Returns:
        One dict per image: ``labels`` uint8 ``[H, W]`` (cropped to the image's own size) and
        ``label_png`` (bytes of the colour PNG).

    Raises:
        RuntimeError: another signature's reply, or outputs for another number of images.
    """
    outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    missing = [name for name in ("labels", "heights", "widths", "label_png_bytes") if name not in outputs]
    if missing:  # Another signature's reply (serving_default's has labels only).
        raise RuntimeError(f"the reply is not a {BYTES_SIGNATURE} response: it has no {', '.join(missing)} "
                           f"(outputs: {sorted(outputs)})")
    counts = {name: len(outputs[name]) for name in ("labels", "heights", "widths", "label_png_bytes")}
    if len(set(counts.values())) > 1 or (num_images is not None and counts["labels"] != num_images):
        sent = "" if num_images is None else f" for the {num_images} images sent"
        raise RuntimeError(f"the reply's outputs hold {counts} images{sent}")  # Not zipped away.
    return [
        {"labels": np.asarray(labels[:height, :width], dtype=np.uint8), "label_png": bytes(png)}
        for labels, height, width, png in zip(
            outputs["labels"], outputs["heights"], outputs["widths"], outputs["label_png_bytes"]
        )
    ]


def predict(server: str, request: predict_pb2.PredictRequest, timeout: float = 60.0) -> predict_pb2.PredictResponse:
    """Sends ``request`` to TF Serving's gRPC port (plain-text channel).

    Raises:
        ValueError: ``timeout`` is not > 0.
        ConnectionError: nothing answered at ``server`` (gRPC ``UNAVAILABLE`` or
            ``DEADLINE_EXCEEDED``); the message names the address.
        RuntimeError: the server answered with an error (e.g. ``NOT_FOUND`` for an unknown
            model); the message names the address, the status and the server's words.
    """
    import grpc

    if not timeout > 0:  # gRPC would report it as a server that did not answer in time.
        raise ValueError(f"timeout must be > 0 seconds. Received: timeout={timeout!r}")
    try:
        with grpc.insecure_channel(
            server, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        ) as channel:
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    except grpc.RpcError as error:  # Also a grpc.Call: code() and details() say what happened.
        code, details = error.code(), " ".join(str(error.details()).split())  # One line.
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ConnectionError(
                f"no TF Serving answered at {server} ({code.name}: {details}): is tensorflow_model_server "
                "running there with --port? (check --server)"
            ) from error
        raise RuntimeError(f"TF Serving at {server} answered {code.name}: {details}") from error


# --- Command line ------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a program, so modules import side-effect free)."""
    flags.DEFINE_string("server", "localhost:8500", "TF Serving's gRPC address (--port).")
    flags.DEFINE_string("model_name", "fcn8s", "The served model's name (--model_name / models.config).")
    flags.DEFINE_string("signature_name", BYTES_SIGNATURE, "The signature that takes encoded images.")
    flags.DEFINE_integer("version", None, "Model version; default: the latest.")
    flags.DEFINE_float("timeout", 60.0, "Seconds to wait for the server.")


def main(argv: list[str]) -> int:
    """Sends the image files named after the flags and reports what came back."""
    paths = argv[1:]
    if not paths:
        print("error: give the image files to segment after the flags", file=sys.stderr)
        return 2
    try:
        request = build_predict_request(paths, FLAGS.model_name, FLAGS.signature_name, FLAGS.version)
        results = parse_predict_response(predict(FLAGS.server, request, FLAGS.timeout), len(paths))
    except ValueError as error:  # --timeout: a bad flag.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:  # One line naming the file or the server, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, result in zip(paths, results):
        labels = result["labels"]
        print(f"{path}: {labels.shape[0]}x{labels.shape[1]}, classes {np.unique(labels).tolist()}")
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
