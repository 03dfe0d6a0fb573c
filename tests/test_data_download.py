"""fcn_keras.data.download: real transfers from a local HTTP server (no internet needed), the
checksum and size checks, mirrors, the cache, extraction, the derived train_aug list, and the
converter's --download_dir."""

import dataclasses
import hashlib
import http.server
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from fcn_keras.data import download as download_lib
from fcn_keras.data.convert import convert
from fcn_keras.data.download import DownloadError, Downloaded, Source, check_file, download, sources_for_splits
from fcn_keras.data.synthetic import make_synthetic_sbd, make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
IDS = [f"synth_{i:06d}" for i in range(9)]


# --- A local file server ----------------------------------------------------------------------


class _Server:
    """Serves a folder over HTTP on 127.0.0.1 and records the paths asked for."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):  # noqa: N802 -- http.server's name
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    served = _Server(folder)
    yield served
    served.httpd.shutdown()


def _digest(path: Path, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, path.read_bytes()).hexdigest()}"


@pytest.fixture
def sources(tmp_path, server) -> dict[str, Source]:
    """VOC and SBD archives and a seg11valid list in their real layouts, on the server.

    VOC: train synth_0..3, val synth_6..8; synth_4 and synth_5 are only in SBD (train: 4, 6, 1;
    val: 5), so train_aug must be synth_0..5: SBD's images added, VOC val (synth_6) left out.
    """
    work = tmp_path / "build"
    voc_root = make_synthetic_voc(work / "VOCdevkit", num_train=6, num_val=3, size=(24, 32))
    lists = voc_root / "VOC2012/ImageSets/Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in IDS[:4]))
    make_synthetic_sbd(work / "benchmark_RELEASE", voc_root, [IDS[4], IDS[6], IDS[1], IDS[5]])
    www = server.folder
    with tarfile.open(www / "VOCtrainval_11-May-2012.tar", "w") as archive:
        archive.add(voc_root, arcname="VOCdevkit")
    with tarfile.open(www / "benchmark.tgz", "w:gz") as archive:
        archive.add(work / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    (www / "seg11valid.txt").write_text(f"{IDS[7]}\n{IDS[8]}\n")
    real = download_lib.SOURCES
    return {
        "voc2012": dataclasses.replace(
            real["voc2012"], urls=(server.url("VOCtrainval_11-May-2012.tar"),),
            checksum=_digest(www / "VOCtrainval_11-May-2012.tar", "sha256"),
            size=(www / "VOCtrainval_11-May-2012.tar").stat().st_size),
        "sbd": dataclasses.replace(real["sbd"], urls=(server.url("benchmark.tgz"),), checksum=_digest(www / "benchmark.tgz", "md5")),
        "seg11valid": dataclasses.replace(
            real["seg11valid"], urls=(server.url("seg11valid.txt"),), checksum=_digest(www / "seg11valid.txt", "sha256"),
            size=(www / "seg11valid.txt").stat().st_size),
    }


# --- Downloading ------------------------------------------------------------------------------


def test_the_printed_converter_flags_survive_a_shell():
    """The command the CLI prints is pasted into a shell: a folder with spaces (or quotes) must
    come back as one argument each."""
    got = Downloaded(voc_root=Path("/data/my data/VOCdevkit"), lists_dir=Path("/data/it's/lists"))
    assert shlex.split(got.convert_flags()) == ["--voc_root=/data/my data/VOCdevkit", "--lists_dir=/data/it's/lists"]


def test_a_download_dir_that_cannot_hold_the_downloads_is_refused_before_any(tmp_path, server, sources):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ValueError, match=r"download_dir must be a folder\. Received: download_dir='.*notes\.txt/cache', "
                                         r"inside '.*notes\.txt', a file"):
        download(("seg11valid",), tmp_path / "notes.txt" / "cache", sources=sources, verbose=False)
    assert server.requests == []


def test_downloads_checks_extracts_derives_train_aug_and_converts(tmp_path, server, sources):
    cache = tmp_path / "cache"
    got = download(("voc2012", "sbd", "seg11valid"), cache, sources=sources, verbose=False)
    assert sorted(server.requests) == ["/VOCtrainval_11-May-2012.tar", "/benchmark.tgz", "/seg11valid.txt"]
    assert (got.voc_root / "VOC2012/JPEGImages" / f"{IDS[0]}.jpg").is_file() and got.voc_root.name == "VOCdevkit"
    assert (got.sbd_root / "dataset/cls" / f"{IDS[4]}.mat").is_file()
    assert (got.lists_dir / "train_aug.txt").read_text().split() == IDS[:6]
    assert (got.lists_dir / "seg11valid.txt").read_text().split() == IDS[7:]
    assert got.convert_flags() == f"--voc_root={got.voc_root} --sbd_root={got.sbd_root} --lists_dir={got.lists_dir}"

    manifest = convert(got.voc_root, tmp_path / "records", splits=("train_aug", "seg11valid", "sbd_train"),
                       sbd_root=got.sbd_root, lists_dir=got.lists_dir, verbose=False)
    assert {s: e["num_examples"] for s, e in manifest["splits"].items()} == {"train_aug": 6, "seg11valid": 2, "sbd_train": 3}

    # Everything is cached: a second call asks the server for nothing and gives the same folders.
    again = download(("voc2012", "sbd", "seg11valid"), cache, sources=sources, verbose=False)
    assert again == got and len(server.requests) == 3
    # VOC alone: no SBD, so no train_aug list is derived, and the lists folder is only returned if it holds lists.
    alone = download(("voc2012",), tmp_path / "other", sources=sources, verbose=False)
    assert alone.sbd_root is None and alone.lists_dir is None


def test_mirror_first_then_the_next_url_when_a_file_is_missing_or_wrong(tmp_path, server, sources):
    mirror = server.folder / "mirror"
    mirror.mkdir()
    (mirror / "seg11valid.txt").write_text(f"{IDS[7]}\n{IDS[0]}\n")  # same name and size, other content
    source = dataclasses.replace(sources["seg11valid"], urls=(server.url("gone/seg11valid.txt"), *sources["seg11valid"].urls))
    got = download(("seg11valid",), tmp_path / "cache", mirror=server.url("mirror"), sources={"seg11valid": source}, verbose=False)
    assert server.requests == ["/mirror/seg11valid.txt", "/gone/seg11valid.txt", "/seg11valid.txt"]
    assert (got.lists_dir / "seg11valid.txt").read_text().split() == IDS[7:]
    # The rejected mirror file was deleted from the cache: only the good download and its records remain.
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_file())
    assert len([name for name in cached if name.endswith(".txt")]) == 1, cached


def test_no_good_url_is_one_error_naming_every_attempt(tmp_path, server, sources):
    (server.folder / "bad.tar").write_bytes(b"not the archive")
    source = dataclasses.replace(sources["voc2012"], urls=(server.url("missing.tar"), server.url("bad.tar")))
    with pytest.raises(DownloadError) as error:
        download(("voc2012",), tmp_path / "cache", sources={"voc2012": source}, verbose=False)
    message = str(error.value)
    assert "could not download voc2012 (VOCtrainval_11-May-2012.tar) from any of 2 URL(s)" in message
    assert f"{server.url('missing.tar')}: DownloadError" in message and "HTTP code: 404" in message
    assert f"{server.url('bad.tar')}: wrong file (size 15 bytes, expected {source.size}); deleted" in message
    assert "--voc_root" in message
    assert not any((tmp_path / "cache/extracted").iterdir())  # nothing extracted
    # A file of the right size but the wrong bytes is named by its checksum.
    (server.folder / "bad.tar").write_bytes(b"x" * source.size)
    with pytest.raises(DownloadError, match=r"wrong file \(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\); deleted"):
        download(("voc2012",), tmp_path / "cache2", sources={"voc2012": dataclasses.replace(source, urls=(server.url("bad.tar"),))},
                 verbose=False)
    with pytest.raises(ValueError, match=r"datasets must be among \('voc2012', 'sbd', 'seg11valid'\)\. Received: \('coco',\)"):
        download(("coco",), tmp_path / "cache")


def test_an_archive_without_its_folder_is_named(tmp_path, server, sources):
    (tmp_path / "other").mkdir()
    (tmp_path / "other/readme.txt").write_text("not a VOCdevkit")
    with tarfile.open(server.folder / "flat.tar", "w") as archive:
        archive.add(tmp_path / "other", arcname="Pascal")
    path = server.folder / "flat.tar"
    source = dataclasses.replace(sources["voc2012"], urls=(server.url("flat.tar"),), checksum=_digest(path, "sha256"),
                                 size=path.stat().st_size)
    with pytest.raises(ValueError, match=r"flat.*\.tar: the archive of voc2012 should hold VOCdevkit/ but holds \['Pascal'\]"):
        download(("voc2012",), tmp_path / "cache", sources={"voc2012": source}, verbose=False)


def test_check_file_hashes_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    source = Source("f", "f.bin", (), _digest(path, "md5"), 3, None, "")
    hashed = []
    real_digests = download_lib.file_digests
    monkeypatch.setattr(download_lib, "file_digests", lambda *args: hashed.append(args) or real_digests(*args))
    assert check_file(path, source) is None and len(hashed) == 1
    marker = tmp_path / "f.bin.verified.json"
    assert json.loads(marker.read_text())["checksum"] == source.checksum

    def no_hashing(*args):
        raise AssertionError(f"hashed again: {args}")

    # The unchanged file (same size and modification time) is not hashed again.
    monkeypatch.setattr(download_lib, "file_digests", no_hashing)
    assert check_file(path, source) is None
    # The marker is for one checksum: another expected checksum hashes the file again.
    with pytest.raises(AssertionError, match="hashed again"):
        check_file(path, dataclasses.replace(source, checksum="md5:" + "0" * 32))
    monkeypatch.setattr(download_lib, "file_digests", real_digests)
    path.write_bytes(b"abd")
    os.utime(path, ns=(1, 1))  # another modification time: the marker no longer applies
    assert check_file(path, source) == f"md5 {hashlib.md5(b'abd').hexdigest()}, expected {source.checksum[4:]}"
    assert check_file(path, dataclasses.replace(source, size=4)) == "size 3 bytes, expected 4"


def test_sources_for_splits():
    assert sources_for_splits(["train", "val"]) == ("voc2012",)
    assert sources_for_splits(["sbd_train", "seg11valid"]) == ("voc2012", "sbd", "seg11valid")
    assert sources_for_splits(["train_aug", "val"]) == ("voc2012", "sbd")
    with pytest.raises(ValueError, match=r"splits must be among .*Received: splits=\('tran',\)"):
        sources_for_splits(["tran"])


def test_the_real_sources_pin_a_checksum_and_a_url_each():
    for source in download_lib.SOURCES.values():
        algorithm, digest = source.checksum.split(":")
        assert len(digest) == hashlib.new(algorithm).digest_size * 2 and int(digest, 16) >= 0
        assert source.urls and all(url.startswith(("http://", "https://")) and url.endswith(source.filename) for url in source.urls)


# --- The converter's --download_dir -----------------------------------------------------------


def _run(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


# The converter's own main, with SOURCES pointed at the test server (FCN_TEST_SOURCES, JSON).
_CONVERT_MAIN = """
import json, os, sys
from absl import app
from fcn_keras.data import convert, download
for name, fields in json.loads(os.environ.get("FCN_TEST_SOURCES", "{}")).items():
    download.SOURCES[name] = download.Source(**{**fields, "urls": tuple(fields["urls"])})
convert._define_flags()
app.run(convert.main, argv=["convert", *sys.argv[1:]])
"""


def test_convert_cli_downloads_what_the_splits_need(tmp_path, server, sources):
    table = json.dumps({name: dataclasses.asdict(source) for name, source in sources.items()})
    out = tmp_path / "records"
    done = _run(_CONVERT_MAIN, f"--download_dir={tmp_path / 'cache'}", f"--output_dir={out}", "--splits=train_aug,seg11valid",
                "--quiet", env={"FCN_TEST_SOURCES": table})
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: e["num_examples"] for s, e in manifest["splits"].items()} == {"train_aug": 6, "seg11valid": 2}
    assert sorted(server.requests) == ["/VOCtrainval_11-May-2012.tar", "/benchmark.tgz", "/seg11valid.txt"]

    both = _run(_CONVERT_MAIN, f"--download_dir={tmp_path / 'cache'}", f"--voc_root={tmp_path}", f"--output_dir={out}")
    assert both.returncode == 2 and "error: --download_dir finds the data itself: drop --voc_root, or drop --download_dir" in both.stderr
    neither = _run(_CONVERT_MAIN, f"--output_dir={out}")
    assert neither.returncode == 2 and "error: pass --voc_root (a VOCdevkit folder), --download_dir" in neither.stderr
