"""SavedModel export for TF Serving: labels equal model.predict's argmax, the signatures are the
documented ones, REST and gRPC requests run through the bytes signature, the clients fail in one
line when no server answers, a run folder and a JAX-trained model export, and bad models /
existing versions are refused."""

import base64
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_keras import export
from fcn_keras.constants import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE
from fcn_keras.data import voc
from fcn_keras.model import build_fcn

REPO_ROOT = Path(__file__).resolve().parents[1]
SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"
# (batch, height, width): the smallest size, odd sizes, a batch of two.
SIZES = [(1, 1, 1), (2, 37, 91), (1, 64, 48), (1, 100, 120)]


# --- Helpers shared with tests/test_predict.py ---------------------------------------------------


def tiny_fcn(seed: int = 0) -> keras.Model:
    """A small FCN-8s (fc_units=8) with seeded random weights on every layer, so labels vary."""
    model = build_fcn("8s", fc_units=8)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def random_image(seed: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] noise with smooth structure (so labels form regions)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(1, size[0] // 8), max(1, size[1] // 8), 3)).astype("uint8")
    smooth = np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BILINEAR))
    return np.clip(smooth.astype(int) + rng.integers(-20, 21, smooth.shape), 0, 255).astype("uint8")


def encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def load_example(name: str):
    """Imports export/<name>.py (a standalone client script, not a package module)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "export" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    keras.utils.clear_session()
    return tiny_fcn()


@pytest.fixture(scope="module")
def keras_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "fcn8s.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """(version folder, loaded SavedModel), exported with probabilities."""
    version_dir = export.export_saved_model(
        model, tmp_path_factory.mktemp("serving"), name="fcn8s", version=1, extra_output="probabilities"
    )
    return version_dir, tf.saved_model.load(str(version_dir))


# --- serving_default ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_serving_default_labels_equal_model_predict_argmax(model, exported, batch, height, width):
    _, loaded = exported
    size = (height, width)
    images = np.stack([random_image(seed, size) for seed in range(1, batch + 1)])
    logits = model.predict(images, verbose=0)
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    assert outputs["labels"].dtype == tf.uint8 and tuple(outputs["labels"].shape) == (batch, *size)
    np.testing.assert_array_equal(outputs["labels"].numpy(), logits.argmax(-1))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)
    if size != (1, 1):  # Random weights give varied labels: the comparison means something.
        assert len(np.unique(logits.argmax(-1))) > 3


def test_export_layout_is_tf_servings_and_leaves_no_temporary_folder(exported):
    version_dir, _ = exported
    assert version_dir.name == "1" and version_dir.parent.name == "fcn8s"
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert [p.name for p in version_dir.parent.iterdir()] == ["1"]
    # A 21-class model with no training record: VOC's names beside it.
    assert (version_dir / export.CLASS_NAMES_FILE).read_text().splitlines() == list(VOC_CLASSES)


# --- saved_model_cli: the documented signature table ---------------------------------------------

# (signature, "input"/"output", tensor, dtype, shape) as written in docs/serving.md.
DOCUMENTED = {
    ("serving_default", "input", "images", "DT_UINT8", "(-1, -1, -1, 3)"),
    ("serving_default", "output", "labels", "DT_UINT8", "(-1, -1, -1)"),
    ("serving_default", "output", "probabilities", "DT_FLOAT", "(-1, -1, -1, 21)"),
    ("predict_image_bytes", "input", "image_bytes", "DT_STRING", "(-1)"),
    ("predict_image_bytes", "output", "labels", "DT_UINT8", "(-1, -1, -1)"),
    ("predict_image_bytes", "output", "heights", "DT_INT32", "(-1)"),
    ("predict_image_bytes", "output", "widths", "DT_INT32", "(-1)"),
    ("predict_image_bytes", "output", "label_png_bytes", "DT_STRING", "(-1)"),
}


def parse_saved_model_cli(text: str) -> set[tuple[str, str, str, str, str]]:
    """(signature, input/output, tensor, dtype, shape) rows from `saved_model_cli show --all`."""
    rows, signature, direction = set(), None, None
    pattern = re.compile(r"(inputs|outputs)\['([^']+)'\] tensor_info:\s+dtype: (\w+)\s+shape: ([^\n]+)")
    for block in re.split(r"(?=signature_def\[')", text):
        header = re.match(r"signature_def\['([^']+)'\]", block)
        if not header or header.group(1).startswith("__"):
            continue
        signature = header.group(1)
        assert "Method name is: tensorflow/serving/predict" in block, block
        for direction, tensor, dtype, shape in pattern.findall(block):
            rows.add((signature, direction[:-1], tensor, dtype, shape.strip()))
    return rows


def test_saved_model_cli_lists_the_documented_signatures(exported):
    version_dir, _ = exported
    result = subprocess.run(
        [str(SAVED_MODEL_CLI), "show", "--all", "--dir", str(version_dir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert parse_saved_model_cli(result.stdout) == DOCUMENTED
    # docs/serving.md's signature table says the same.
    doc = (REPO_ROOT / "docs" / "serving.md").read_text()
    for signature, direction, tensor, dtype, shape in DOCUMENTED:
        shape = shape.replace("21", "C")
        row = f"| `{signature}` | {direction} | `{tensor}` | `{dtype}` | `{shape}` |"
        assert row in doc, f"docs/serving.md lacks the row {row}"


# --- The bytes signature through REST and gRPC requests ------------------------------------------


@pytest.fixture(scope="module")
def image_files(model, tmp_path_factory):
    """Two PNGs of different sizes and a JPEG: [(path, model.predict argmax uint8 [H, W])]."""
    folder = tmp_path_factory.mktemp("images")
    files = []
    for index, (size, image_format) in enumerate([((37, 91), "PNG"), ((64, 48), "PNG"), ((45, 50), "JPEG")]):
        image = random_image(10 + index, size)
        path = folder / f"image{index}.{image_format.lower()}"
        path.write_bytes(encode(image, image_format))
        if image_format == "JPEG":  # Lossy: the pixels are what the server's decoder makes of the bytes.
            image = tf.io.decode_image(path.read_bytes(), channels=3).numpy()
        files.append((path, model.predict(image[np.newaxis], verbose=0)[0].argmax(-1).astype(np.uint8)))
    return files


def serve_rest(loaded, body_text: str) -> dict:
    """What TF Serving does with a row-format :predict request on a one-input signature:
    {"b64": ...} instances become the bytes of a DT_STRING [N] tensor; each output's rows
    become one object per instance, ``*_bytes`` outputs as {"b64": ...}."""
    body = json.loads(body_text)
    signature = loaded.signatures[body["signature_name"]]
    (input_name,) = signature.structured_input_signature[1]
    values = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
    outputs = {name: tensor.numpy() for name, tensor in signature(**{input_name: tf.constant(values)}).items()}

    def to_json(name, value):
        return {"b64": base64.b64encode(value).decode()} if name.endswith("_bytes") else value.tolist()

    predictions = [
        {name: to_json(name, outputs[name][row]) for name in outputs} for row in range(len(values))
    ]
    return json.loads(json.dumps({"predictions": predictions}))


def test_rest_body_runs_through_the_bytes_signature(exported, image_files):
    _, loaded = exported
    rest = load_example("rest_request")
    body = rest.build_rest_body([path for path, _ in image_files])
    assert body["signature_name"] == export.BYTES_SIGNATURE
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [p.read_bytes() for p, _ in image_files]

    response = serve_rest(loaded, json.dumps(body))
    padded = np.asarray(response["predictions"][1]["labels"])
    assert padded.shape == (64, 91)  # The largest height and width of the request.
    assert (padded[:, 48:] == IGNORE_LABEL).all()  # The 64x48 image's map is padded with void.

    results = rest.parse_rest_response(response)
    for (path, expected), result in zip(image_files, results):
        np.testing.assert_array_equal(result["labels"], expected, err_msg=str(path))
        colours = np.asarray(Image.open(io.BytesIO(result["label_png"])).convert("RGB"))
        np.testing.assert_array_equal(colours, VOC_PALETTE[expected])
    # A reply short of an image is an error, not a map silently missing from the output.
    assert len(rest.parse_rest_response(response, num_images=3)) == 3
    with pytest.raises(RuntimeError, match="the reply holds 2 predictions for the 3 images sent"):
        rest.parse_rest_response({"predictions": response["predictions"][:2]}, num_images=3)


def test_grpc_predict_request_runs_through_the_bytes_signature(exported, image_files):
    _, loaded = exported
    grpc_request = load_example("grpc_request")
    paths = [path for path, _ in image_files]
    request = grpc_request.build_predict_request(paths, model_name="fcn8s", version=1)
    assert request.model_spec.name == "fcn8s" and request.model_spec.version.value == 1
    assert request.model_spec.signature_name == "predict_image_bytes"
    tensor = request.inputs["image_bytes"]
    assert tensor.dtype == tf.string.as_datatype_enum and [d.size for d in tensor.tensor_shape.dim] == [3]

    # The server side: the proto becomes the signature's input, its outputs a PredictResponse.
    from tensorflow_serving.apis import predict_pb2

    signature = loaded.signatures[request.model_spec.signature_name]
    outputs = signature(image_bytes=tf.constant(tf.make_ndarray(tensor)))
    response = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    for (path, expected), result in zip(image_files, grpc_request.parse_predict_response(response)):
        np.testing.assert_array_equal(result["labels"], expected, err_msg=str(path))
    with pytest.raises(RuntimeError, match=r"the reply's outputs hold \{'labels': 3, 'heights': 3, 'widths': 3, "
                                           r"'label_png_bytes': 3\} images for the 4 images sent"):
        grpc_request.parse_predict_response(response, num_images=4)
    short = predict_pb2.PredictResponse()
    short.CopyFrom(response)
    short.outputs["heights"].CopyFrom(tf.make_tensor_proto(tf.make_ndarray(response.outputs["heights"])[:2]))
    with pytest.raises(RuntimeError, match=r"the reply's outputs hold \{'labels': 3, 'heights': 2, .*\} images$"):
        grpc_request.parse_predict_response(short)
    # serving_default's reply (labels only), and a timeout gRPC would report as a silent server.
    del response.outputs["label_png_bytes"], response.outputs["heights"]
    with pytest.raises(RuntimeError, match=r"the reply is not a predict_image_bytes response: it has no heights, "
                                           r"label_png_bytes \(outputs: \['labels', 'widths'\]\)"):
        grpc_request.parse_predict_response(response)
    with pytest.raises(ValueError, match=r"timeout must be > 0 seconds. Received: timeout=0"):
        grpc_request.predict("localhost:8500", request, timeout=0)


def test_bytes_signature_decodes_bmp_gif_and_alpha_as_read_image_does(exported, tmp_path):
    """TensorFlow's BMP decoder returns an 8-bit BMP's palette indices as gray; the signature
    looks them up in the colour table, and the predict CLI (read_image) decodes BMPs and GIFs
    with the same ops: the same pixels, hence the same labels, whichever way an image goes. Gray
    and alpha (PNG, WebP: read by PIL in the CLI) give the signature the CLI's pixels too."""
    from fcn_keras.io import decode_image_tensor, read_image

    _, loaded = exported
    rgb = random_image(21, (23, 31))
    palette = Image.fromarray(rgb).quantize(16)
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    files = {"palette.bmp": palette, "gray.bmp": Image.fromarray(rgb[..., 0]), "rgb.bmp": Image.fromarray(rgb),
             "palette.gif": palette, "tiny.gif": Image.fromarray(rgb[:1, :1]), "rgba.png": rgba,
             "gray_alpha.png": rgba.convert("LA"), "rgba.webp": rgba}
    for name, image in files.items():
        image.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
    expected = {name: np.asarray(image.convert("RGB")) for name, image in files.items()}
    signature = loaded.signatures[export.BYTES_SIGNATURE]
    decode = tf.function(decode_image_tensor)
    for name in files:
        encoded = (tmp_path / name).read_bytes()
        pixels = read_image(tmp_path / name)
        np.testing.assert_array_equal(pixels, expected[name], err_msg=name)  # The file's true colours.
        np.testing.assert_array_equal(decode(tf.constant(encoded)).numpy(), pixels, err_msg=name)
        served = signature(image_bytes=tf.constant([encoded]))["labels"].numpy()[0]
        np.testing.assert_array_equal(served, loaded.signatures["serving_default"](
            images=tf.constant(pixels[np.newaxis]))["labels"].numpy()[0], err_msg=name)
    assert len(np.unique(expected["palette.bmp"][..., 0])) > 2  # Colours, not 0..15 as gray.


@pytest.fixture
def dead_port():
    """A local port bound but not listening: connecting to it is refused, and nothing else can
    take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("script", ["rest_request", "grpc_request"])
def test_clients_say_in_one_line_that_no_server_answered(script, dead_port, image_files):
    server = f"http://127.0.0.1:{dead_port}" if script == "rest_request" else f"127.0.0.1:{dead_port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "export" / f"{script}.py"), f"--server={server}", str(image_files[0][0])],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: no TF Serving answered at {server}"), line
    assert "Connection refused" in line, line


def test_rest_client_takes_a_bare_address_joins_error_lines_and_refuses_a_shared_stem(dead_port, tmp_path):
    rest = load_example("rest_request")
    with pytest.raises(ConnectionError, match=re.escape(f"no TF Serving answered at http://127.0.0.1:{dead_port}/v1/")):
        rest.post_predict(f"127.0.0.1:{dead_port}", "fcn8s", {"instances": []}, timeout=10)
    # TF Serving's errors end with "\n\t [[{{node ...}}]]": one line all the same.
    with pytest.raises(RuntimeError) as error:
        rest.parse_rest_response({"error": "Invalid JPEG data\n\t [[{{node DecodeJpeg}}]]"})
    assert str(error.value) == "TF Serving returned an error: Invalid JPEG data [[{{node DecodeJpeg}}]]"
    # Another signature's reply (serving_default's labels only), or not TF Serving's: one line.
    for reply in ({"predictions": [[[0, 1]]]}, {"predictions": [{"labels": [[0]]}]}, ["not", "a", "dict"]):
        with pytest.raises(RuntimeError, match="the reply is not a predict_image_bytes response"):
            rest.parse_rest_response(reply)
    for server, timeout, match in (("ftp://127.0.0.1:8501", 10, "server must be an http:// or https:// URL"),
                                   ("notaurl:abc", 10, "server is not a usable URL .*nonnumeric port"),
                                   ("127.0.0.1:8501", -1, r"timeout must be > 0 seconds. Received: timeout=-1")):
        with pytest.raises(ValueError, match=match):
            rest.post_predict(server, "fcn8s", {"instances": []}, timeout=timeout)

    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    (tmp_path / "x" / "a.jpg").write_bytes(b"1")
    (tmp_path / "y" / "a.png").write_bytes(b"2")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "export" / "rest_request.py"), f"--output_dir={tmp_path / 'out'}",
         str(tmp_path / "x" / "a.jpg"), str(tmp_path / "y" / "a.png")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr == (
        f"error: {tmp_path / 'y' / 'a.png'} and {tmp_path / 'x' / 'a.jpg'} would both write a_labels.png in "
        "--output_dir; rename one\n"
    ), result.stderr


def test_rest_client_checks_its_flags_before_sending_and_needs_no_absl(dead_port, image_files, tmp_path):
    """Found by review: an --output_dir that cannot be a folder failed with a traceback after the
    server's work, "http://" was called a server that did not answer, and the client promised to
    need only numpy and the standard library but imported absl (blocked here)."""
    runner = ("import runpy, sys; sys.modules['absl'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", runner, str(REPO_ROOT / "export" / "rest_request.py"), *args],
                              capture_output=True, text=True, timeout=120)

    image = str(image_files[0][0])
    (tmp_path / "a_file").write_text("")
    result = run(f"--server=127.0.0.1:{dead_port}", f"--output_dir={tmp_path / 'a_file'}", image)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: --output_dir={tmp_path / 'a_file'} cannot be a folder: "), result.stderr
    result = run("--server=http://", image)
    assert result.returncode == 2 and result.stderr == (
        "error: server must be an http:// or https:// URL with a host, or host:port. Received: server='http://'\n")
    result = run("--no_such_flag=1", image)
    assert result.returncode == 2 and result.stderr == "error: unrecognized arguments: --no_such_flag=1 (see --help)\n"
    result = run(f"--server=127.0.0.1:{dead_port}", f"--output_dir={tmp_path / 'out'}", image)
    assert result.returncode == 1 and "error: no TF Serving answered at" in result.stderr, result.stderr


def test_models_config_is_a_valid_model_server_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (REPO_ROOT / "export" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model_config,) = config.model_config_list.config
    assert model_config.name == "fcn8s" and model_config.base_path == "/models/fcn8s"
    assert model_config.model_platform == "tensorflow"


# --- The CLI, overwriting, atomicity, bad models ---------------------------------------------------


def run_export_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "fcn_keras.export", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_exports_logits(model, keras_file, tmp_path):
    names = ",".join(f"c{i}" for i in range(21))
    (tmp_path / "colours.txt").write_text("".join(f"c{i} {i} 0 {255 - i}\n" for i in range(21)))
    result = run_export_cli(f"--model={keras_file}", f"--export_dir={tmp_path}", "--name=tiny", "--version=3", "--logits",
                            f"--class_names={names}", f"--label_colours={tmp_path / 'colours.txt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exported {keras_file} to {tmp_path / 'tiny' / '3'}" in result.stdout
    assert f"class names: {tmp_path / 'tiny' / '3' / export.CLASS_NAMES_FILE}" in result.stdout
    assert (tmp_path / "tiny" / "3" / export.CLASS_NAMES_FILE).read_text() == names.replace(",", "\n") + "\n"
    loaded = tf.saved_model.load(str(tmp_path / "tiny" / "3"))
    images = random_image(5, (40, 52))[np.newaxis]
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    assert sorted(outputs) == ["labels", "logits"] and outputs["logits"].dtype == tf.float32
    np.testing.assert_allclose(outputs["logits"].numpy(), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    png = loaded.signatures[export.BYTES_SIGNATURE](image_bytes=tf.constant([encode(images[0], "PNG")]))["label_png_bytes"]
    labels = outputs["labels"].numpy()[0].astype(np.int64)
    assert len(np.unique(labels)) > 1
    expected = np.stack([labels, np.zeros_like(labels), 255 - labels], axis=-1)  # class i in (i, 0, 255 - i)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.numpy()[0]))), expected)


def test_cli_refuses_probabilities_with_logits_before_exporting(keras_file, tmp_path):
    """serving_default returns at most one extra output: both flags are one error line, status 2,
    and nothing is exported (the model is a good one: without the check it would be)."""
    result = run_export_cli(f"--model={keras_file}", f"--export_dir={tmp_path / 'serving'}", "--probabilities", "--logits")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["fcn_keras.export: error: flags probabilities=True, logits=True: --probabilities and --logits are "
                      "exclusive: serving_default returns at most one of them (see python -m fcn_keras.export --help)"]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "serving").exists()


def test_existing_versions_are_kept_unless_overwrite_and_a_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    version_dir = tmp_path / "m" / "2"
    version_dir.mkdir(parents=True)
    (version_dir / "old.txt").write_text("version 2 being served")
    with pytest.raises(FileExistsError, match=f"{re.escape(str(version_dir))} already exists; pass --overwrite"):
        export.export_saved_model(model, tmp_path, name="m", version=2)
    assert (version_dir / "old.txt").is_file()
    export.export_saved_model(model, tmp_path, name="m", version=2, overwrite=True)
    assert (version_dir / "saved_model.pb").is_file() and not (version_dir / "old.txt").exists()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["2"]  # The old copy is gone.

    def fail_midway(module, path, signatures):
        Path(path).mkdir()
        (Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(model, tmp_path, name="m", version=7)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["2"]  # No "7", no temporary folder.


def test_overwrite_replaces_a_version_that_is_a_link_or_a_file(model, tmp_path):
    """Found by review: --overwrite of a version that was a link (to a version stored elsewhere)
    or a file put the new SavedModel in place, then failed removing the old one (rmtree)."""
    store = tmp_path / "store" / "7"
    store.mkdir(parents=True)
    (store / "kept.txt").write_text("version 7, served through a link")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "1").symlink_to(store)
    (tmp_path / "m" / "2").write_text("a stray file")
    (tmp_path / "m" / "3").symlink_to(tmp_path / "gone")  # A dangling link is there all the same.
    for version in (1, 2, 3):
        with pytest.raises(FileExistsError, match=re.escape(f"{tmp_path / 'm' / str(version)} already exists")):
            export.export_saved_model(model, tmp_path, name="m", version=version)
        export.export_saved_model(model, tmp_path, name="m", version=version, overwrite=True)
        version_dir = tmp_path / "m" / str(version)
        assert not version_dir.is_symlink() and (version_dir / "saved_model.pb").is_file()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "3"]  # Nothing hidden left.
    assert (store / "kept.txt").read_text() == "version 7, served through a link"  # The target is kept.


def test_a_fixed_size_model_serves_its_size_and_names_it_for_another(tmp_path):
    """Found by review: the bytes signature of a model built for 64x64 images failed on other
    sizes with "Incompatible shapes" from inside the network."""
    keras.utils.clear_session()
    fixed = build_fcn("8s", fc_units=8, input_shape=(64, 64, 3))
    loaded = tf.saved_model.load(str(export.export_saved_model(fixed, tmp_path, name="fixed")))
    assert loaded.signatures["serving_default"].structured_input_signature[1]["images"].shape.as_list() == [None, 64, 64, 3]
    image = random_image(3, (64, 64))
    outputs = loaded.signatures[export.BYTES_SIGNATURE](image_bytes=tf.constant([encode(image, "PNG")]))
    np.testing.assert_array_equal(outputs["labels"].numpy()[0], fixed.predict(image[None], verbose=0)[0].argmax(-1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            "this model was exported from one built for images of width 64 only (input_shape (64, 64, 3)); export a "
            "model built with input_shape=(None, None, 3) to serve images of any size")):
        loaded.signatures[export.BYTES_SIGNATURE](image_bytes=tf.constant([encode(random_image(3, (64, 70)), "PNG")]))


def test_an_export_dir_that_is_a_file_and_a_version_that_appears_meanwhile(model, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'file'} is a file, not a folder")):
        export.export_saved_model(model, tmp_path / "file", name="m")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "m").write_text("not a folder")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'base' / 'm'} is a file, not a folder")):
        export.export_saved_model(model, tmp_path / "base", name="m")

    # Another export writes version 3 while this one saves: it is kept, this one fails.
    save = tf.saved_model.save

    def save_while_another_exports(module, path, signatures):
        save(module, path, signatures=signatures)
        (tmp_path / "m" / "3").mkdir()
        (tmp_path / "m" / "3" / "saved_model.pb").write_text("the other export's")

    monkeypatch.setattr(tf.saved_model, "save", save_while_another_exports)
    with pytest.raises(FileExistsError, match=re.escape(f"{tmp_path / 'm' / '3'} appeared while exporting")):
        export.export_saved_model(model, tmp_path, name="m", version=3)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["3"]  # No temporary folder left.
    assert (tmp_path / "m" / "3" / "saved_model.pb").read_text() == "the other export's"


def test_bad_model_files_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model file not found: {re.escape(str(tmp_path / 'no.keras'))}"):
        export.export_saved_model(tmp_path / "no.keras", tmp_path / "out")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=f"cannot load {re.escape(str(garbage))} as a Keras model: it is not a "
                       r"\.keras archive \(not a zip file\)"):
        export.export_saved_model(garbage, tmp_path / "out")
    inputs = keras.Input((32, 32, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inputs)))
    classifier.save(tmp_path / "classifier.keras")
    with pytest.raises(ValueError, match=r"classifier.keras is not an FCN: expected one output of shape \[B, H, W, classes\]"):
        export.export_saved_model(tmp_path / "classifier.keras", tmp_path / "out")
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="model must be a .keras file"):
        export.export_saved_model(weights, tmp_path / "out")
    run = tmp_path / "runs" / "fcn16s"
    run.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(
        f"model folder {run} holds no trained model: looked for {run / 'best.keras'} and {run / 'last.keras'}"
    )):
        export.export_saved_model(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_folder_exports_its_best_keras(model, keras_file, tmp_path):
    run = tmp_path / "runs" / "fcn8s"
    run.mkdir(parents=True)
    (run / "best.keras").symlink_to(keras_file)  # What fcn_keras.train leaves, with last.keras.
    (run / "last.keras").write_bytes(b"not this one")
    names = [f"part {i}" for i in range(21)]
    (run / "config.json").write_text(json.dumps({"config": {}, "class_names": names}))  # As fcn_keras.train records them.
    version_dir = export.export_saved_model(run, tmp_path / "serving", name="fcn8s", version=1)
    images = random_image(6, (33, 47))[np.newaxis]
    labels = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(images))["labels"]
    np.testing.assert_array_equal(labels.numpy(), model.predict(images, verbose=0).argmax(-1))
    assert (version_dir / export.CLASS_NAMES_FILE).read_text().splitlines() == names
    with pytest.raises(ValueError, match=r"class_names must name the model's 21 classes\. Received: 2 names \(a, b\)$"):
        export.export_saved_model(run, tmp_path / "serving", name="fcn8s", version=2, class_names=["a", "b"])
    (run / "config.json").write_text(json.dumps({"config": {}, "class_names": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match=r"the class names its training run recorded \(.*fcn8s\) must name the model's 21 classes"):
        export.export_saved_model(run, tmp_path / "serving", name="fcn8s", version=2)
    # A model of another class count, and nothing to name its classes: no file (the CLI says so).
    three = build_fcn("32s", 3, fc_units=8, geometry="same")
    assert not (export.export_saved_model(three, tmp_path / "serving", name="three") / export.CLASS_NAMES_FILE).exists()


def test_label_colours_paint_the_label_pngs_of_the_bytes_signature(model, image_files, tmp_path):
    names = [f"part {i}" for i in range(21)]
    colours = tmp_path / "colours.csv"
    colours.write_text("name,r,g,b\n" + "".join(f"part {i},{i},{2 * i},{3 * i}\n" for i in range(21)) + "void,255,0,255\n")
    version_dir = export.export_saved_model(model, tmp_path / "serving", class_names=names, label_colours=colours)
    palette = voc.read_label_colours(colours, names).palette
    assert palette[20].tolist() == [20, 40, 60]
    signature = tf.saved_model.load(str(version_dir)).signatures[export.BYTES_SIGNATURE]
    outputs = signature(image_bytes=tf.constant([path.read_bytes() for path, _ in image_files]))
    for png, (path, expected) in zip(outputs["label_png_bytes"].numpy(), image_files):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), palette[expected], err_msg=str(path))
    # Names are those of the model's classes: a colour map of other names is refused before anything is written.
    with pytest.raises(ValueError, match=r"colours.csv', line 2 \('part 0,0,0,0'\): 'part 0' is not a class of the dataset \(21: c0"):
        export.export_saved_model(model, tmp_path / "serving", version=2, class_names=[f"c{i}" for i in range(21)],
                                  label_colours=colours)
    assert sorted(p.name for p in (tmp_path / "serving" / "fcn8s").iterdir()) == ["1"]


# --- A model trained under the JAX backend --------------------------------------------------------

JAX_TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    sys.path.insert(0, sys.argv[3])
    from test_export import random_image, tiny_fcn

    model_path, out_path = sys.argv[1:3]
    model = tiny_fcn(seed=3)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 37, 91, 3)).astype("uint8")
    labels = rng.integers(0, 21, (2, 37, 91)).astype("uint8")
    before = model.get_layer("score_fr").get_weights()[0].copy()
    history = model.fit(images, labels, batch_size=1, epochs=1, verbose=0)  # Two steps.
    assert not np.array_equal(before, model.get_layer("score_fr").get_weights()[0]), "fit changed nothing"
    model.save(model_path)
    test_images = np.stack([random_image(20, (37, 91)), random_image(21, (37, 91))])
    np.savez(out_path, images=test_images, logits=np.asarray(model.predict(test_images, verbose=0)))
    print("loss", history.history["loss"])
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_trained_model_exports_under_tensorflow(tmp_path):
    script = tmp_path / "train_jax.py"
    script.write_text(JAX_TRAIN_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "jax.keras"), str(tmp_path / "jax.npz"), str(Path(__file__).parent)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    assert keras.backend.backend() == "tensorflow"
    version_dir = export.export_saved_model(tmp_path / "jax.keras", tmp_path / "serving", name="jax")
    saved = np.load(tmp_path / "jax.npz")
    labels = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(saved["images"]))["labels"].numpy()
    logits = saved["logits"]
    jax_labels = logits.argmax(-1)
    assert len(np.unique(jax_labels)) > 3
    # Exact wherever JAX's top two classes differ by more than float32 noise across backends.
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4 * np.abs(logits).max()
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels[clear], jax_labels[clear])
