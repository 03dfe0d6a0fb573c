r"""REST client for an FCN served by TensorFlow Serving (standard library + numpy only).

    python export/rest_request.py --server=http://localhost:8501 --model_name=fcn8s \
        --output_dir=out photo.jpg other.png

Sends the image files as they are (encoded bytes, base64 in ``{"b64": ...}``) to the
``predict_image_bytes`` signature; the server decodes, preprocesses, segments and colourises
them. Writes ``<output_dir>/<stem>_labels.png`` (the label map in the VOC colours, as returned
by the server) and prints each image's size and the classes found.

The request body (TF Serving's REST "row" format):

    {"signature_name": "predict_image_bytes", "instances": [{"b64": "<base64 JPEG/PNG>"}, ...]}

The response has one object per instance: ``labels`` (nested lists [Hmax][Wmax], 255 beyond the
image), ``heights``, ``widths`` and ``label_png_bytes`` (``{"b64": ...}``: TF Serving
base64-encodes outputs whose name ends in ``_bytes``).

Errors are one line on stderr and exit status 1: no TF Serving answering at ``--server`` (the
message names the URL), an error status from the server (with its message), a reply that is not
the bytes signature's or holds another number of predictions than images sent, an unreadable
image file, a label PNG that cannot be written; status 2,
before anything is sent, for a ``--server`` that is no http(s) URL or ``host:port``, a
``--timeout`` <= 0, no image named, an unknown flag, or an ``--output_dir`` that cannot be a
folder. Its command line is ``argparse``'s, so a client machine needs nothing beyond Python and
numpy.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BYTES_SIGNATURE = "predict_image_bytes"

# --- Request and response ----------------------------------------------------------------------


def build_rest_body(paths: Sequence[str | os.PathLike], signature_name: str = BYTES_SIGNATURE) -> dict:
    """The JSON body of a ``:predict`` request carrying encoded image files.

    Args:
        paths: JPEG/PNG/BMP/GIF files, sent unchanged.
        signature_name: the bytes signature of the exported model.

    Returns:
        ``{"signature_name": ..., "instances": [{"b64": str}, ...]}``, one instance per file.
    """
    if not paths:
        raise ValueError("paths must name at least one image file")
    instances = [{"b64": base64.b64encode(Path(path).read_bytes()).decode("ascii")} for path in paths]
    return {"signature_name": signature_name, "instances": instances}


def parse_rest_response(response: dict, num_images: int | None = None) -> list[dict]:
    """Reads a row-format ``:predict`` response of the bytes signature.

    Args:
        response: the decoded JSON response, ``{"predictions": [{...}, ...]}``.
        num_images: the number of images sent, checked against the predictions (``None``: not checked).

    Returns:
        One dict per image: ``labels`` uint8 ``[H, W]`` (cropped to the image's own size) and
        ``label_png`` (bytes of the colour PNG).

    Raises:
        RuntimeError: an error reply, another signature's, or another number of predictions.
    """
    if not isinstance(response, dict):
        raise RuntimeError(f"the reply is not a {BYTES_SIGNATURE} response: {str(response)[:80]!r}")
    if "error" in response:
        raise RuntimeError(f"TF Serving returned an error: {_one_line(response['error'])}")
    results = []
    try:
        for prediction in response["predictions"]:
            labels = np.asarray(prediction["labels"], dtype=np.uint8)
            height, width = int(prediction["heights"]), int(prediction["widths"])
            results.append(
                {
                    "labels": labels[:height, :width],
                    "label_png": base64.b64decode(prediction["label_png_bytes"]["b64"]),
                }
            )
    except (KeyError, TypeError, ValueError) as error:  # Another signature's outputs, or not TF Serving.
        raise RuntimeError(f"the reply is not a {BYTES_SIGNATURE} response (row format with labels, heights, widths "
                           f"and label_png_bytes): {type(error).__name__}: {error}") from error
    if num_images is not None and len(results) != num_images:  # Not zipped away: each image gets its map.
        raise RuntimeError(f"the reply holds {len(results)} predictions for the {num_images} images sent")
    return results


def _one_line(text: object) -> str:
    """TF Serving's error text on one line (its messages end with "\\n\\t [[{{node ...}}]]")."""
    return " ".join(str(text).split())


def post_predict(server: str, model_name: str, body: dict, timeout: float = 60.0) -> dict:
    """POSTs ``body`` to ``<server>/v1/models/<model_name>:predict`` and returns the JSON reply.

    ``server`` is a URL (``http://host:8501``); a bare ``host:port`` is taken as ``http://``.

    Raises:
        ValueError: ``server`` is no http(s) URL or ``host:port``, or ``timeout`` is not > 0.
        ConnectionError: nothing answered at that URL (refused, unreachable, timed out); the
            message names the URL.
        RuntimeError: the server answered with an error status (e.g. an unknown model), or
            with something that is not JSON; the message names the URL and the server's words.
    """
    if "://" not in server:
        server = f"http://{server}"
    if server.split("://", 1)[0].lower() not in ("http", "https") or not urllib.parse.urlsplit(server).hostname:
        raise ValueError(f"server must be an http:// or https:// URL with a host, or host:port. Received: server={server!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds. Received: timeout={timeout!r}")
    url = f"{server.rstrip('/')}/v1/models/{model_name}:predict"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read()
    except (ValueError, http.client.InvalidURL) as error:  # e.g. "nonnumeric port"
        raise ValueError(f"server is not a usable URL ({error}). Received: server={server!r}") from error
    except urllib.error.HTTPError as error:  # An answer, with an error status: say what it said.
        detail = error.read().decode("utf-8", "replace").strip()
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise RuntimeError(f"TF Serving at {url} answered HTTP {error.code}: {_one_line(detail)}") from error
    except (urllib.error.URLError, OSError) as error:  # Refused, unreachable, timed out, reset.
        reason = getattr(error, "reason", None) or error
        raise ConnectionError(
            f"no TF Serving answered at {url} ({reason}): is tensorflow_model_server running there "
            "with --rest_api_port? (check --server)"
        ) from error
    try:
        return json.loads(text)
    except ValueError as error:
        raise RuntimeError(f"the reply of {url} is not JSON, so not TF Serving's: {text[:80]!r}") from error


# --- Command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Bad flags are one ``error:`` line and status 2, as in fcn_keras' CLIs."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(description="Segment image files with an FCN served by TF Serving (REST).")
    parser.add_argument("--server", default="http://localhost:8501", help="TF Serving's REST address (--rest_api_port): a URL or host:port.")
    parser.add_argument("--model_name", default="fcn8s", help="The served model's name (--model_name / models.config).")
    parser.add_argument("--signature_name", default=BYTES_SIGNATURE, help="The signature that takes encoded images.")
    parser.add_argument("--output_dir", help="If set, write <stem>_labels.png (VOC colours) here.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for the server.")
    parser.add_argument("images", nargs="*", help="The image files (JPEG, PNG, BMP, GIF, WebP).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Sends the image files named on the command line and reports what came back."""
    args = _parser().parse_args(argv)
    paths = args.images
    if not paths:
        print("error: give the image files to segment after the flags", file=sys.stderr)
        return 2
    if args.output_dir:  # <stem>_labels.png: two inputs with one stem would write one file.
        stems = {}
        for path in paths:
            if Path(path).stem in stems:
                print(f"error: {path} and {stems[Path(path).stem]} would both write "
                      f"{Path(path).stem}_labels.png in --output_dir; rename one", file=sys.stderr)
                return 2
            stems[Path(path).stem] = path
        try:  # Before the request, not after the server's work.
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: --output_dir={args.output_dir} cannot be a folder: {error}", file=sys.stderr)
            return 2
    try:
        body = build_rest_body(paths, args.signature_name)
        results = parse_rest_response(post_predict(args.server, args.model_name, body, args.timeout), len(paths))
    except ValueError as error:  # --server or --timeout: bad flags.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:  # One line naming the file or the server, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, result in zip(paths, results):
        classes = np.unique(result["labels"]).tolist()
        print(f"{path}: {result['labels'].shape[0]}x{result['labels'].shape[1]}, classes {classes}")
        if args.output_dir:
            target = Path(args.output_dir) / f"{Path(path).stem}_labels.png"
            temp = target.with_name(f".{target.name}.tmp")
            try:
                temp.write_bytes(result["label_png"])
                os.replace(temp, target)
            except OSError as error:
                print(f"error: cannot write {target}: {error}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
