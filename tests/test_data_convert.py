"""The converter: manifest and shards, exact contents, idempotence and resume, validation of
every pair (clear errors, --skip_invalid with a report), SBD .mat, SegmentationClassAug,
seg11valid, a dataset of your own (any classes, PNG images), parallel determinism, and the CLI."""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from fcn_keras.constants import VOC_CLASSES, VOC_PALETTE
from fcn_keras.data import convert as convert_lib
from fcn_keras.data import records, voc
from fcn_keras.data.convert import convert
from fcn_keras.data.synthetic import make_synthetic_folder_dataset, make_synthetic_sbd, make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def voc_root(tmp_path):
    return make_synthetic_voc(tmp_path / "VOCdevkit", num_train=7, num_val=3, size=(40, 48), seed=2)


def _read_split(output_dir: Path, manifest: dict, split: str) -> dict[str, dict]:
    """Every record of a split, by id, decoded."""
    examples = {}
    for shard in manifest["splits"][split]["shards"]:
        for serialized in tf.data.TFRecordDataset(str(output_dir / shard["name"])):
            parsed = records.parse_example(serialized)
            examples[parsed["image_id"].numpy().decode()] = {k: v.numpy() for k, v in parsed.items()}
    return examples


def _indices(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        return np.array(png)


# --- Output -----------------------------------------------------------------------------------


def test_manifest_shards_and_exact_contents(voc_root, tmp_path):
    out = tmp_path / "records"
    manifest = convert(voc_root, out, shard_size=3, num_workers=2, verbose=False)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == records.SCHEMA_VERSION and manifest["source"]["voc_root"] == str(voc_root.resolve())
    train = manifest["splits"]["train"]
    assert (train["num_examples"], train["num_skipped"], train["num_shards"]) == (7, 0, 3)
    assert [s["name"] for s in train["shards"]] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert [s["num_examples"] for s in train["shards"]] == [3, 3, 1]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [s["name"] for e in manifest["splits"].values() for s in e["shards"]]
    )
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            assert shard["sha256"] == hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest()
            assert shard["num_bytes"] == (out / shard["name"]).stat().st_size
    for split in ("train", "val"):
        ids = (voc_root / "VOC2012/ImageSets/Segmentation" / f"{split}.txt").read_text().split()
        examples = _read_split(out, manifest, split)
        assert list(examples) == ids  # list order, nothing dropped
        for image_id, example in examples.items():
            jpeg = (voc_root / "VOC2012/JPEGImages" / f"{image_id}.jpg").read_bytes()
            np.testing.assert_array_equal(example["image"], tf.io.decode_jpeg(jpeg, channels=3).numpy())
            np.testing.assert_array_equal(example["label"], _indices(voc_root / "VOC2012/SegmentationClass" / f"{image_id}.png"))
    assert sorted(tf.io.gfile.glob(str(out / train["glob"]))) == [str(out / s["name"]) for s in train["shards"]]


def test_output_is_deterministic_whatever_the_parallelism(voc_root, tmp_path):
    one = convert(voc_root, tmp_path / "one", num_workers=1, shard_size=4, verbose=False)
    four = convert(voc_root, tmp_path / "four", num_workers=4, shard_size=4, verbose=False)
    sha = lambda m: [s["sha256"] for e in m["splits"].values() for s in e["shards"]]  # noqa: E731
    assert sha(one) == sha(four)


def test_idempotent_and_rewrites_only_what_changed(voc_root, tmp_path):
    out = tmp_path / "records"
    manifest = convert(voc_root, out, shard_size=3, verbose=False)
    names = [s["name"] for s in manifest["splits"]["train"]["shards"]]
    stamps = {n: (out / n).stat().st_mtime_ns for n in [*names, "manifest.json"]}
    again = convert(voc_root, out, shard_size=3, verbose=False)
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps  # nothing rewritten, the manifest neither
    assert again == manifest
    # A manifest written before shard sizes were recorded gets them, nothing rewritten.
    (out / "manifest.json").write_text(json.dumps({**manifest, "splits": {split: {**entry, "shards": [
        {k: v for k, v in shard.items() if k != "num_bytes"} for shard in entry["shards"]]} for split, entry in manifest["splits"].items()}}))
    assert convert(voc_root, out, shard_size=3, verbose=False)["splits"] == manifest["splits"]
    assert {n: (out / n).stat().st_mtime_ns for n in names} == {n: stamps[n] for n in names}
    # A damaged shard (sha256 mismatch) and a shard whose source changed are rewritten, only them.
    (out / names[0]).write_bytes(b"truncated")
    last_before = manifest["splits"]["train"]["shards"][2]  # holds synth_000006
    mask = voc_root / "VOC2012/SegmentationClass/synth_000006.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    third = convert(voc_root, out, shard_size=3, verbose=False)
    assert (out / names[1]).stat().st_mtime_ns == stamps[names[1]]
    assert (out / names[0]).stat().st_mtime_ns != stamps[names[0]] and (out / names[2]).stat().st_mtime_ns != stamps[names[2]]
    assert third["splits"]["train"]["shards"][0]["sha256"] == manifest["splits"]["train"]["shards"][0]["sha256"]
    # The damaged file itself was rewritten (found by review: the checks above held with the
    # sha256 check removed, the manifest keeping the old digest beside the damaged file).
    assert hashlib.sha256((out / names[0]).read_bytes()).hexdigest() == manifest["splits"]["train"]["shards"][0]["sha256"]
    assert third["splits"]["train"]["shards"][2]["fingerprint"] != last_before["fingerprint"]
    # A new shard count replaces the old shards (the glob must not read stale ones).
    fourth = convert(voc_root, out, shard_size=10, verbose=False)
    assert sorted(p.name for p in out.glob("train-*")) == ["train-00000-of-00001.tfrecord"]
    assert fourth["splits"]["train"]["num_examples"] == 7


def test_a_rerun_that_stops_early_keeps_what_it_had_not_reached(voc_root, tmp_path, monkeypatch):
    """Found by review: a rerun that failed in its first shard left a manifest of that split alone
    (the val entry and the reused train shards gone), so val was 'no split' and the next run
    rewrote every shard. A glob of the stopped split was read in part."""
    from fcn_keras.data.pipeline import resolve_data

    out = tmp_path / "records"
    first = convert(voc_root, out, splits=("train", "val"), shard_size=3, verbose=False)
    mask = voc_root / "VOC2012/SegmentationClass/synth_000001.png"  # In train's first shard.
    original = mask.read_bytes()
    _break_value(voc_root / "VOC2012")
    with pytest.raises(voc.InvalidPairError, match=r"synth_000001.png: mask values outside"):
        convert(voc_root, out, splits=("train", "val"), shard_size=3, verbose=False)
    kept = json.loads((out / "manifest.json").read_text())["splits"]
    assert kept["val"] == first["splits"]["val"]
    assert kept["train"]["complete"] is False and kept["train"]["shards"] == first["splits"]["train"]["shards"][1:]
    assert kept["train"]["num_examples"] == 4  # The reused shards' 4 images, counted.
    assert resolve_data(out, tmp_path / "cache", splits=("val",))["val"].endswith("val-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].tfrecord")
    with pytest.raises(ValueError, match=r"data matches shards of split 'train' of .*manifest.json, whose conversion "
                                         r"stopped after 2 of 3 shards: it would be read in part"):
        resolve_data(str(out / "train-*.tfrecord"), tmp_path / "cache")
    assert resolve_data(str(out / "val-*.tfrecord"), tmp_path / "cache")  # A complete split's glob is fine.
    mask.write_bytes(original)
    encode, calls = convert_lib._encode_pair, []
    monkeypatch.setattr(convert_lib, "_encode_pair", lambda pair, **options: calls.append(pair.image_id) or encode(pair, **options))
    again = convert(voc_root, out, splits=("train", "val"), shard_size=3, verbose=False)
    assert calls == ["synth_000000", "synth_000001", "synth_000002"]  # Only the shard that failed.
    assert again["splits"]["val"] == first["splits"]["val"]
    for shard, before in zip(again["splits"]["train"]["shards"], first["splits"]["train"]["shards"]):
        assert {**shard, "fingerprint": None} == {**before, "fingerprint": None}  # Same bytes (the mask's time is new).


def test_a_split_kept_from_other_data_is_warned_about(voc_root, tmp_path, caplog):
    out = tmp_path / "records"
    convert(voc_root, out, verbose=False)
    other = make_synthetic_voc(tmp_path / "other", num_train=2, num_val=1, size=(40, 48), seed=9)
    with caplog.at_level("WARNING", logger="fcn_keras.data.convert"):
        manifest = convert(other, out, splits=("train",), max_images=1, verbose=False)
    assert manifest["splits"]["val"]["source"]["voc_root"] == str(voc_root.resolve())  # kept, and said so:
    assert re.search(rf"also holds split 'val' converted from other data: voc_root '{re.escape(str(voc_root.resolve()))}' "
                     rf"\(now '{re.escape(str(other.resolve()))}'\), max_images None \(now 1\)", caplog.text)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fcn_keras.data.convert"):
        convert(voc_root, out, splits=("train",), verbose=False)  # the same data again: nothing to say
    assert "other data" not in caplog.text


def test_killed_run_leaves_only_complete_shards_and_resumes(voc_root, tmp_path, monkeypatch):
    out = tmp_path / "records"
    encode = convert_lib._encode_pair
    calls = []

    def dies_on_fifth(pair, **options):
        calls.append(pair.image_id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # what a kill in the middle of shard 2 looks like to the writer
        return encode(pair, **options)

    monkeypatch.setattr(convert_lib, "_encode_pair", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        convert(voc_root, out, splits=("train",), shard_size=3, num_workers=1, verbose=False)
    # Shard 1 is complete and recorded; shard 2 left neither a final file nor a temporary one.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-00000-of-00003.tfrecord"]
    partial = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert partial["complete"] is False and [s["name"] for s in partial["shards"]] == ["train-00000-of-00003.tfrecord"]
    stamp = (out / "train-00000-of-00003.tfrecord").stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(convert_lib, "_encode_pair", lambda pair, **options: calls.append(pair.image_id) or encode(pair, **options))
    manifest = convert(voc_root, out, splits=("train",), shard_size=3, num_workers=1, verbose=False)
    assert calls == [f"synth_{i:06d}" for i in range(3, 7)]  # only the unfinished shards
    assert (out / "train-00000-of-00003.tfrecord").stat().st_mtime_ns == stamp
    assert manifest["splits"]["train"]["complete"] and manifest["splits"]["train"]["num_examples"] == 7


def test_temporaries_left_by_a_killed_run_are_removed_with_a_count(voc_root, tmp_path, caplog):
    """A SIGKILL leaves a partial hidden shard (``atomic_path`` cannot remove it): the next
    conversion of its split removes it, and says so; other splits' temporaries are left alone."""
    from fcn_keras.files import atomic_path, temporary_target

    out = tmp_path / "records"
    with atomic_path(out / "train-00001-of-00003.tfrecord") as temporary:  # The name atomic_path gives.
        killed = out / temporary.name.replace(str(os.getpid()), "4242", 1)
        temporary.write_bytes(b"")
    assert temporary_target(killed.name) == "train-00001-of-00003.tfrecord"
    killed.write_bytes(b"partial")
    others = [out / ".tmp-4242-0a1b2c3d-val-00000-of-00001.tfrecord", out / ".tmp-4242-0a1b2c3d-x-train-00000-of-00001.tfrecord",
              out / ".tmp-4242-0a1b2c3d-manifest.json"]
    for other in others:
        other.write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="fcn_keras.data.convert"):
        convert(voc_root, out, splits=("train",), shard_size=3, verbose=False)
    assert not killed.exists() and all(other.exists() for other in others)
    assert f"removed 1 temporary file(s) of split 'train' left in {out} by a stopped conversion: {killed.name}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fcn_keras.data.convert"):
        convert(voc_root, out, splits=("train",), shard_size=3, verbose=False)
    assert "temporary file" not in caplog.text


def test_lists_are_read_before_anything_is_written_and_a_failed_split_is_marked_incomplete(voc_root, tmp_path, caplog):
    """A missing or empty list stops the run before any file or folder is made; a split that
    fails midway is recorded as incomplete, the splits before it as complete, and the data
    resolver refuses the incomplete one (training would otherwise use part of it, or none)."""
    from fcn_keras.data.pipeline import resolve_data

    out = tmp_path / "records"
    with pytest.raises(ValueError, match=r"no id list for split 'seg11valid'"):
        convert(voc_root, out, splits=("train", "seg11valid"), verbose=False)
    val_list = voc_root / "VOC2012/ImageSets/Segmentation/val.txt"
    ids = val_list.read_text()
    val_list.write_text("\n")
    with pytest.raises(ValueError, match=re.escape(f"list file {val_list} names no image: it is empty")):
        convert(voc_root, out, splits=("train", "val"), verbose=False)
    assert not out.exists()
    val_list.write_text(ids)
    first_val = ids.split()[0]
    jpeg = voc_root / f"VOC2012/JPEGImages/{first_val}.jpg"
    good = jpeg.read_bytes()
    jpeg.write_bytes(good[:300])
    with pytest.raises(voc.InvalidPairError, match=f"{first_val}.jpg: undecodable JPEG"):
        convert(voc_root, out, splits=("train", "val"), verbose=False)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert splits["train"]["complete"] is True and splits["val"]["complete"] is False
    with pytest.raises(ValueError, match=r"data's split 'val' is incomplete: its conversion stopped after 0 of 1 shards"):
        resolve_data(out, tmp_path / "cache")
    assert set(resolve_data(out, tmp_path / "cache", splits=("train",))) == {"train"}  # Not asked for: left out.
    # Skipped as invalid, every pair of a split: an empty split, refused by name; said even when quiet.
    with caplog.at_level(logging.WARNING, logger="fcn_keras.data.convert"):
        convert(voc_root, out, splits=("val",), skip_invalid=True, max_images=1, verbose=False)
    assert f"skipped 1 invalid pair(s); report: {out / 'skipped.json'}" in caplog.text
    with pytest.raises(ValueError, match=r"data's split 'val' holds no image \(1 skipped as invalid, list .*val.txt\)"):
        resolve_data(out, tmp_path / "cache")
    jpeg.write_bytes(good)
    assert convert(voc_root, out, splits=("val",), verbose=False)["splits"]["val"]["complete"]
    assert set(resolve_data(out, tmp_path / "cache")) == {"train", "val"}
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"output_dir must be a folder. Received: output_dir='.*a_file', a file"):
        convert(voc_root, tmp_path / "a_file", verbose=False)


# --- Validation -------------------------------------------------------------------------------


def _break_value(voc_vocroot: Path) -> str:
    mask = voc_vocroot / "SegmentationClass/synth_000001.png"
    label = _indices(mask)
    label[0, 0] = 42
    png = Image.fromarray(label, "P")
    png.putpalette(Image.open(mask).getpalette())
    png.save(mask)
    return r"SegmentationClass/synth_000001.png: mask values outside \{0..20, 255\}: \[42\]"


def _break_size(vocdir: Path) -> str:
    mask = vocdir / "SegmentationClass/synth_000001.png"
    Image.fromarray(_indices(mask)[:-1], "L").save(mask)
    return r"SegmentationClass/synth_000001.png: mask is \d+x\d+ \(HxW\) but its image .*synth_000001.jpg is \d+x\d+"


def _break_transposed(vocdir: Path) -> str:
    """A mask of the image's area but turned (W x H): found by review to pass a check by size."""
    mask = vocdir / "SegmentationClass/synth_000001.png"
    Image.fromarray(np.ascontiguousarray(_indices(mask).T), "L").save(mask)
    return r"SegmentationClass/synth_000001.png: mask is (\d+)x(\d+) \(HxW\) but its image .*synth_000001.jpg is \2x\1"


def _break_missing_mask(vocdir: Path) -> str:
    (vocdir / "SegmentationClass/synth_000001.png").unlink()
    return "SegmentationClass/synth_000001.png: mask file is missing"


def _break_missing_image(vocdir: Path) -> str:
    (vocdir / "JPEGImages/synth_000001.jpg").unlink()
    return "JPEGImages/synth_000001.jpg: image file is missing"


def _break_truncated_jpeg(vocdir: Path) -> str:
    jpeg = vocdir / "JPEGImages/synth_000001.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    return r"JPEGImages/synth_000001.jpg: undecodable JPEG \(.*Invalid JPEG data"


def _break_not_jpeg(vocdir: Path) -> str:
    Image.new("RGB", (48, 40)).save(vocdir / "JPEGImages/synth_000001.jpg", format="BMP")
    return "JPEGImages/synth_000001.jpg: image is neither a JPEG nor a PNG file"


def _break_rgb_mask(vocdir: Path) -> str:
    mask = vocdir / "SegmentationClass/synth_000001.png"
    Image.open(mask).convert("RGB").save(mask)
    return "synth_000001.png: mask is a mode-RGB PNG; expected a palette"


def _break_undecodable_mask(vocdir: Path) -> str:
    (vocdir / "SegmentationClass/synth_000001.png").write_bytes(b"\x89PNG not really")
    return r"synth_000001.png: undecodable PNG mask"


def _break_duplicate(vocdir: Path) -> str:
    listing = vocdir / "ImageSets/Segmentation/train.txt"
    listing.write_text(listing.read_text() + "synth_000001\n")
    return r"train.txt: duplicate id 'synth_000001' on lines 2 and 8"


def _break_absent_id(vocdir: Path) -> str:
    listing = vocdir / "ImageSets/Segmentation/train.txt"
    listing.write_text(listing.read_text() + "2008_999999\n")
    return r"train.txt: id '2008_999999' \(line 8\) is listed but absent on disk: neither .*2008_999999.jpg nor"


BREAKERS = [
    _break_value, _break_size, _break_transposed, _break_missing_mask, _break_missing_image, _break_truncated_jpeg,
    _break_not_jpeg, _break_rgb_mask, _break_undecodable_mask, _break_duplicate, _break_absent_id,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[len("_break_"):])
def test_invalid_pair_stops_with_file_and_problem_or_is_skipped_and_reported(voc_root, tmp_path, breaker):
    match = breaker(voc_root / "VOC2012")
    out = tmp_path / "records"
    with pytest.raises(voc.InvalidPairError, match=match):
        convert(voc_root, out, splits=("train",), verbose=False)
    assert not list(out.glob("*.tfrecord")) and not list(out.glob(".*tmp*"))
    manifest = convert(voc_root, out, splits=("train",), skip_invalid=True, verbose=False)
    train = manifest["splits"]["train"]
    valid = 7 if breaker in (_break_duplicate, _break_absent_id) else 6  # those only add a bad line
    assert (train["num_examples"], train["num_skipped"]) == (valid, 1)
    report = json.loads((out / "skipped.json").read_text())
    assert manifest["skipped_report"] == "skipped.json" and len(report) == 1
    assert report[0]["split"] == "train" and report[0]["image_id"] in ("synth_000001", "2008_999999")
    assert re.search(match, f"{report[0]['path']}: {report[0]['problem']}")
    ids = [int(i.split("_")[1]) for i in _read_split(out, manifest, "train")]
    assert ids == [i for i in range(7) if valid == 7 or i != 1]
    # The skipped pair is still known on a rerun: without --skip_invalid it fails again.
    with pytest.raises(voc.InvalidPairError, match=match):
        convert(voc_root, out, splits=("train",), verbose=False)


def test_bad_arguments_and_layouts(voc_root, tmp_path):
    assert set(convert(voc_root, tmp_path / "one", splits="val", verbose=False)["splits"]) == {"val"}  # a CLI-style string
    with pytest.raises(ValueError, match=r"splits must be among \('train', 'val'.*Received: splits=\('test',\)"):
        convert(voc_root, tmp_path, splits=("test",))
    with pytest.raises(ValueError, match=r"voc_root must be a VOCdevkit folder holding VOC2012/ \(pass the folder above"):
        convert(voc_root / "VOC2012", tmp_path)
    with pytest.raises(ValueError, match="shard_size must be an integer >= 1. Received: shard_size=0"):
        convert(voc_root, tmp_path, shard_size=0)
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 1. Received: num_workers=0"):
        convert(voc_root, tmp_path, num_workers=0)  # Not silently the CPU count.
    with pytest.raises(ValueError, match=r"no id list for split 'seg11valid': none of .*seg11valid.txt"):
        convert(voc_root, tmp_path, splits=("seg11valid",))
    with pytest.raises(ValueError, match=r"split 'sbd_train' reads SBD: pass sbd_root \(--sbd_root\)"):
        convert(voc_root, tmp_path, splits=("sbd_train",))
    with pytest.raises(ValueError, match=r"splits must name at least one split. Received: splits=\(\)"):
        convert(voc_root, tmp_path / "none", splits=())
    with pytest.raises(ValueError, match=r"max_images must be >= 1 or None. Received: max_images=0"):
        convert(voc_root, tmp_path / "none", max_images=0)  # Not an empty split.
    assert not (tmp_path / "none").exists()


def test_the_error_counts_the_problems_after_the_first(voc_root, tmp_path):
    """Found by a mutation review: the count of further problems could be off by one, for a
    list's problems and for those recorded in reused shards, and no test noticed."""
    other = make_synthetic_voc(tmp_path / "other", num_train=3, num_val=1, size=(40, 48), seed=2)
    for image_id in ("synth_000000", "synth_000002"):  # Two bad masks in one shard.
        mask = other / f"VOC2012/SegmentationClass/{image_id}.png"
        label = _indices(mask)
        label[0, 0] = 42
        Image.fromarray(label, "L").save(mask)
    out = tmp_path / "records"
    assert convert(other, out, splits=("train",), skip_invalid=True, verbose=False)["splits"]["train"]["num_skipped"] == 2
    with pytest.raises(voc.InvalidPairError, match=r"synth_000000.png: mask values outside \{0..20, 255\}: \[42\] "
                                                   r"\(id 'synth_000000'\) \(and 1 more problems; --skip_invalid"):
        convert(other, out, splits=("train",), verbose=False)  # The shard is reused: its recorded problems.
    _break_missing_mask(voc_root / "VOC2012")
    with pytest.raises(voc.InvalidPairError) as one:
        convert(voc_root, tmp_path / "r", splits=("train",), verbose=False)
    assert str(one.value).endswith("synth_000001.png: mask file is missing (id 'synth_000001')")
    (voc_root / "VOC2012/SegmentationClass/synth_000005.png").unlink()
    with pytest.raises(voc.InvalidPairError, match=r"\(id 'synth_000001'\) \(and 1 more problems; --skip_invalid"):
        convert(voc_root, tmp_path / "r", splits=("train",), verbose=False)


def test_the_shard_count_limit(voc_root, tmp_path, monkeypatch):
    monkeypatch.setattr(convert_lib, "MAX_SHARDS", 7)  # 99999 in truth: five digits.
    manifest = convert(voc_root, tmp_path / "r", splits=("train",), shard_size=1, verbose=False)
    assert manifest["splits"]["train"]["num_shards"] == 7
    monkeypatch.setattr(convert_lib, "MAX_SHARDS", 6)
    with pytest.raises(ValueError, match=r"split 'train' would need 7 shards \(at most 6\): raise --shard_size. "
                                         r"Received: shard_size=1"):
        convert(voc_root, tmp_path / "r2", splits=("train",), shard_size=1, verbose=False)


def test_reruns_see_a_mask_of_another_size_drop_a_stale_report_and_other_versions_splits(voc_root, tmp_path):
    out = tmp_path / "records"
    convert(voc_root, out, splits=("train", "val"), verbose=False)
    # A mask replaced keeping its modification time (a copy that keeps times): its size differs.
    mask = voc_root / "VOC2012/SegmentationClass/synth_000003.png"
    stat, label = mask.stat(), np.zeros_like(_indices(mask))
    Image.fromarray(label, "L").save(mask)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert mask.stat().st_size != stat.st_size
    manifest = convert(voc_root, out, splits=("train",), verbose=False)
    np.testing.assert_array_equal(_read_split(out, manifest, "train")["synth_000003"]["label"], label)
    # A pair skipped, then mended: the report goes.
    broken = voc_root / "VOC2012/SegmentationClass/synth_000001.png"
    original = broken.read_bytes()
    _break_value(voc_root / "VOC2012")
    convert(voc_root, out, splits=("train",), skip_invalid=True, verbose=False)
    assert (out / "skipped.json").is_file()
    broken.write_bytes(original)
    assert convert(voc_root, out, splits=("train",), verbose=False)["skipped_report"] is None
    assert not (out / "skipped.json").exists()
    # A manifest of another schema version: its other splits are not carried into this one.
    stored = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**stored, "version": f"other-{stored['version']}"}))
    assert set(convert(voc_root, out, splits=("train",), verbose=False)["splits"]) == {"train"}


def test_a_split_found_complete_is_recorded_so_before_a_later_split_fails(voc_root, tmp_path):
    """A split whose shards are all current but recorded as incomplete (a run killed before
    saying so) is marked complete before the next split, which may fail before any write."""
    out = tmp_path / "records"
    jpeg = voc_root / "VOC2012/JPEGImages/synth_000007.jpg"  # In val.
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    convert(voc_root, out, splits=("train", "val"), skip_invalid=True, verbose=False)
    stored = json.loads((out / "manifest.json").read_text())
    stored["splits"]["train"]["complete"] = False
    (out / "manifest.json").write_text(json.dumps(stored))
    with pytest.raises(voc.InvalidPairError, match=r"synth_000007.jpg: undecodable JPEG"):  # val's recorded problem
        convert(voc_root, out, splits=("train", "val"), verbose=False)
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["complete"] is True


def test_lists_with_a_bom_crlf_and_voc_flags_sbd_folders_split_and_class_names(voc_root, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_bytes("\ufeffsynth_000000 1\r\nsynth_000002 -1\r\n".encode())  # Windows, VOC's flags
    _, pairs, problems = voc.resolve_pairs("train", voc_root, lists_dir=lists)
    assert [pair.image_id for pair in pairs] == ["synth_000000", "synth_000002"] and not problems
    # SBD's dataset/ folder comes first, even when its root holds a cls/ folder too.
    make_synthetic_sbd(tmp_path / "sbd", voc_root, ["synth_000000"])
    (tmp_path / "sbd/cls").mkdir()
    assert voc.sbd_dir(tmp_path / "sbd", "sbd_train") == voc.sbd_dir(tmp_path / "sbd/dataset", "sbd_train") == tmp_path / "sbd/dataset"
    for split in (".hidden", "-x", "_x", "a/b", ""):  # Hidden shards, flag-like names, paths.
        with pytest.raises(ValueError, match=rf"split names must be letters.*Received: split={re.escape(repr(split))}"):
            voc.check_split_name(split)
    voc.check_split_name("a.b-c_9")
    assert len(voc.read_class_names([f"c{i}" for i in range(255)])) == 255
    with pytest.raises(ValueError, match=r"2 to 255 class names .*Received: 256 in class_names="):  # 255 is void
        voc.read_class_names([f"c{i}" for i in range(256)])


def test_masks_that_are_not_png_deep_colour_masks_and_bad_mat_values_are_refused(voc_root, tmp_path):
    fake = tmp_path / "jpeg_mask.png"  # JPEG bytes under a .png name: blurred values, refused.
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(fake, format="JPEG")
    with pytest.raises(voc.InvalidPairError, match=r"jpeg_mask.png: mask is not a PNG file \(format JPEG\)"):
        voc.read_label(fake)
    deep = tmp_path / "deep_rgb.png"  # 16 bits per channel: PIL reads it as mode RGB, rounded.
    deep.write_bytes(tf.io.encode_png(np.zeros((4, 4, 3), np.uint16)).numpy())
    with pytest.raises(voc.InvalidPairError, match=r"deep_rgb.png: colour mask is a mode-RGB, 16-bit PNG"):
        voc.read_label(deep, voc.read_label_colours("voc", ("a", "b")))
    mat = tmp_path / "x.mat"
    for segmentation, match in ((np.array([[0, -1]]), r"mask values outside 0..255: range -1..0"),
                                (np.array([[0, 256]]), r"mask values outside 0..255: range 0..256"),
                                (np.zeros((2, 2, 2)), r"GTcls.Segmentation has shape \(2, 2, 2\), expected \[H, W\]")):
        scipy.io.savemat(mat, {"GTcls": {"Segmentation": segmentation}})
        with pytest.raises(voc.InvalidPairError, match=rf"x.mat: {match}"):  # Not wrapped to 255 (void) or 0.
            voc.read_label(mat)
    scipy.io.savemat(mat, {"GTcls": {"Segmentation": np.array([[0, 5], [20, 1]], np.uint8)}})
    colours = voc.read_label_colours("voc", VOC_CLASSES)  # SBD's masks are indices, whatever the colours.
    np.testing.assert_array_equal(voc.read_label(mat, colours), [[0, 5], [20, 1]])
    # A pair's problems are named by its id (its image's name), not by its mask's file name.
    bad = tmp_path / "aachen_gtFine_labelIds.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(voc.InvalidPairError, match=r"undecodable PNG mask") as caught:
        voc.load_pair(voc.Pair("aachen_leftImg8bit", voc_root / "VOC2012/JPEGImages/synth_000000.jpg", bad))
    assert caught.value.problem.image_id == "aachen_leftImg8bit"


# --- Other layouts ----------------------------------------------------------------------------


def test_sbd_mat_masks(voc_root, tmp_path):
    ids = [f"synth_{i:06d}" for i in range(4)]
    masks = make_synthetic_sbd(tmp_path / "benchmark_RELEASE", voc_root, ids)
    out = tmp_path / "records"
    manifest = convert(voc_root, out, splits=("sbd_train", "sbd_val"), sbd_root=tmp_path / "benchmark_RELEASE", verbose=False)
    assert manifest["splits"]["sbd_train"]["num_examples"] == 3 and manifest["splits"]["sbd_val"]["num_examples"] == 1
    examples = {**_read_split(out, manifest, "sbd_train"), **_read_split(out, manifest, "sbd_val")}
    assert sorted(examples) == ids
    for image_id, example in examples.items():
        np.testing.assert_array_equal(example["label"], masks[image_id])
    # SBD's own splits need no VOCdevkit (found by review: one was required, and a wrong one recorded).
    alone = convert(None, tmp_path / "alone", splits=("sbd_train", "sbd_val"), sbd_root=tmp_path / "benchmark_RELEASE", verbose=False)
    assert alone["splits"]["sbd_train"]["shards"][0]["sha256"] == manifest["splits"]["sbd_train"]["shards"][0]["sha256"]
    assert alone["source"]["voc_root"] is None
    with pytest.raises(ValueError, match=r"voc_root must be a VOCdevkit folder holding VOC2012/. Received: voc_root='.*nowhere'"):
        convert(tmp_path / "nowhere", tmp_path / "alone", splits=("sbd_train",), sbd_root=tmp_path / "benchmark_RELEASE")
    # Fractions and NaN are refused, not truncated (1.5 read as 1, NaN as background).
    for value, shown in ((1.5, "1.5"), (np.nan, "nan")):
        segmentation = masks["synth_000000"].astype(np.float64)
        segmentation[0, :2] = value
        scipy.io.savemat(tmp_path / "benchmark_RELEASE/dataset/cls/synth_000000.mat",
                         {"GTcls": {"Segmentation": segmentation}})
        with pytest.raises(voc.InvalidPairError, match=rf"synth_000000.mat: 2 mask values are not whole numbers \(a float64 "
                                                       rf"mask; e.g. {shown}\)"):
            voc.read_label(tmp_path / "benchmark_RELEASE/dataset/cls/synth_000000.mat")
    # A .mat without SBD's structure is named.
    scipy.io.savemat(tmp_path / "benchmark_RELEASE/dataset/cls/synth_000000.mat", {"seg": masks["synth_000000"]})
    with pytest.raises(voc.InvalidPairError, match=r"cls/synth_000000.mat: no GTcls.Segmentation in the .mat file"):
        convert(voc_root, tmp_path / "other", splits=("sbd_train",), sbd_root=tmp_path / "benchmark_RELEASE", verbose=False)


def test_sbd_lists_are_not_taken_from_a_lists_dir_holding_voc_lists(voc_root, tmp_path):
    """A lists folder of DeepLab's kind holds VOC's train.txt and val.txt: SBD's splits read SBD's
    own lists, unless the folder holds sbd_train.txt / sbd_val.txt."""
    ids = [f"synth_{i:06d}" for i in range(5)]
    make_synthetic_sbd(tmp_path / "sbd", voc_root, ids)  # dataset/train.txt: 4 ids, val.txt: 1
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("synth_000000\n")
    (lists / "val.txt").write_text("synth_000001\nsynth_000002\n")
    (lists / "seg11valid.txt").write_text("synth_000007\n")
    out = tmp_path / "records"
    manifest = convert(voc_root, out, splits=("sbd_train", "sbd_val", "seg11valid"), sbd_root=tmp_path / "sbd",
                       lists_dir=lists, verbose=False)
    assert manifest["splits"]["sbd_train"]["list"] == str(tmp_path / "sbd/dataset/train.txt")
    assert list(_read_split(out, manifest, "sbd_train")) == ids[:4]
    assert list(_read_split(out, manifest, "sbd_val")) == ids[4:]
    assert manifest["splits"]["seg11valid"]["list"] == str(lists / "seg11valid.txt")
    (lists / "sbd_train.txt").write_text("synth_000003\nsynth_000001\n")  # SBD's own name: used
    assert voc.find_list("sbd_train", voc_root, tmp_path / "sbd", lists) == lists / "sbd_train.txt"
    assert voc.find_list("sbd_val", voc_root, tmp_path / "sbd", lists) == tmp_path / "sbd/dataset/val.txt"


def test_segmentation_class_aug_train_aug_and_seg11valid(voc_root, tmp_path):
    vocdir = voc_root / "VOC2012"
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_aug.txt").write_text("synth_000000\nsynth_000002\nsynth_000004\n")
    (lists / "seg11valid.txt").write_text("synth_000007\nsynth_000008\n")
    # train_aug without SegmentationClassAug: VOC masks where present, else SBD's.
    masks = make_synthetic_sbd(tmp_path / "sbd", voc_root, ["synth_000004"])
    (vocdir / "SegmentationClass/synth_000004.png").unlink()
    out = tmp_path / "records"
    manifest = convert(voc_root, out, splits=("train_aug", "seg11valid"), lists_dir=lists, sbd_root=tmp_path / "sbd", verbose=False)
    examples = _read_split(out, manifest, "train_aug")
    assert list(examples) == ["synth_000000", "synth_000002", "synth_000004"]
    np.testing.assert_array_equal(examples["synth_000000"]["label"], _indices(vocdir / "SegmentationClass/synth_000000.png"))
    np.testing.assert_array_equal(examples["synth_000004"]["label"], masks["synth_000004"])
    assert list(_read_split(out, manifest, "seg11valid")) == ["synth_000007", "synth_000008"]
    # With a SegmentationClassAug folder (grayscale PNGs), train_aug reads its masks.
    aug = vocdir / "SegmentationClassAug"
    aug.mkdir()
    expected = {}
    for image_id in ("synth_000000", "synth_000002", "synth_000004"):
        shape = _indices(vocdir / "JPEGImages" / f"{image_id}.jpg").shape[:2]
        expected[image_id] = np.full(shape, 7, np.uint8)
        Image.fromarray(expected[image_id], "L").save(aug / f"{image_id}.png")
    manifest = convert(voc_root, out, splits=("train_aug",), lists_dir=lists, verbose=False)
    for image_id, example in _read_split(out, manifest, "train_aug").items():
        np.testing.assert_array_equal(example["label"], expected[image_id])
    assert manifest["splits"]["seg11valid"]["num_examples"] == 2  # other splits kept in the manifest


# --- CLI --------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "fcn_keras.data.convert", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_converts_fails_clearly_and_skips_with_report(voc_root, tmp_path):
    vocdir = voc_root / "VOC2012"
    _break_value(vocdir)
    _break_missing_mask_of = vocdir / "SegmentationClass/synth_000005.png"
    _break_missing_mask_of.unlink()
    out = tmp_path / "records"
    failed = _cli(f"--voc_root={voc_root}", f"--output_dir={out}", "--splits=train,val", "--num_workers=2")
    assert failed.returncode == 2
    assert "error: " in failed.stderr and "synth_000005.png: mask file is missing" in failed.stderr
    assert "and 0 more" not in failed.stderr
    skipped = _cli(f"--voc_root={voc_root}", f"--output_dir={out}", "--splits=train,val", "--skip_invalid", "--shard_size=2")
    assert skipped.returncode == 0, skipped.stderr
    assert "train: 5 examples in 3 shard(s), 2 skipped" in skipped.stdout
    # Printed to a pipe, the progress bar is one plain line per split, no escape codes.
    assert "\x1b[" not in skipped.stdout and re.search(r"^6/6 - \d+s - ", skipped.stdout, re.MULTILINE), skipped.stdout
    assert "val: 3 examples in 2 shard(s), 0 skipped" in skipped.stdout
    assert f"skipped 2 invalid pair(s); report: {out / 'skipped.json'}" in skipped.stdout
    report = json.loads((out / "skipped.json").read_text())
    assert sorted(r["image_id"] for r in report) == ["synth_000001", "synth_000005"]
    assert any("[42]" in r["problem"] for r in report)
    helped = _cli("--help")
    for flag in ("voc_root", "output_dir", "sbd_root", "lists_dir", "splits", "skip_invalid", "num_workers", "shard_size", "max_images",
                 "label_colours"):
        assert f"--{flag}" in helped.stdout


# --- A dataset of your own --------------------------------------------------------------------


@pytest.fixture
def own(tmp_path):
    return make_synthetic_folder_dataset(tmp_path / "mine", num_train=6, num_val=3, seed=4)


def test_own_dataset_exact_contents_class_names_and_pixel_counts(own, tmp_path):
    out = tmp_path / "records"
    manifest = convert(None, out, **own, shard_size=4, num_workers=2, verbose=False)
    assert manifest["class_names"] == ["background", "road", "car"]
    assert manifest["source"]["class_names"] == manifest["class_names"]
    without = {key: value for key, value in manifest.items() if key != "class_names"}
    assert convert_lib.manifest_class_names(without) == VOC_CLASSES  # written before names were recorded: VOC
    formats = set()
    for split in ("train", "val"):
        ids = (own["lists_dir"] / f"{split}.txt").read_text().split()
        examples = _read_split(out, manifest, split)
        assert list(examples) == ids
        counts, image_pixels = np.zeros(256, np.int64), np.zeros(3, np.int64)
        for image_id, example in examples.items():
            label = _indices(own["labels_dir"] / f"{image_id}.png")
            np.testing.assert_array_equal(example["label"], label)
            own_counts = np.bincount(label.ravel(), minlength=256)
            counts += own_counts
            image_pixels += np.where(own_counts[:3] > 0, own_counts[:3].sum(), 0)  # Eigen & Fergus' denominators.
            (path,) = own["images_dir"].glob(f"{image_id}.*")
            if path.suffix == ".png":  # Lossless: RGB, gray and palette PNGs give PIL's RGB pixels.
                with Image.open(path) as png:
                    np.testing.assert_array_equal(example["image"], np.array(png.convert("RGB")))
            else:
                np.testing.assert_array_equal(example["image"], tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy())
        for shard in manifest["splits"][split]["shards"]:
            for serialized in tf.data.TFRecordDataset(str(out / shard["name"])):
                formats.add(records.parse_features(serialized)["image/format"].numpy())
        entry = manifest["splits"][split]
        assert entry["class_pixels"] == counts[:3].tolist() and entry["void_pixels"] == counts[255] > 0
        assert sum(counts[3:255]) == 0 and min(entry["class_pixels"]) > 0
        assert entry["class_pixels"] == np.sum([s["class_pixels"] for s in entry["shards"]], axis=0).tolist()
        assert entry["class_image_pixels"] == image_pixels.tolist()
        assert (image_pixels > counts[:3]).all()  # Each class is absent from some labelled pixels of its images.
    assert formats == {b"jpeg", b"png"}
    # A rerun keeps every shard (the pixel counts are in the manifest).
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    assert convert(None, out, **own, shard_size=4, verbose=False)["splits"] == manifest["splits"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == before


def test_own_dataset_other_split_names_suffix_cases_and_a_names_file_with_a_bom(own, tmp_path):
    # Windows editors start files with a byte-order mark and end lines with \r\n: neither is in a name.
    own["class_names"].write_bytes("\ufeffbackground\r\nroad\r\ncar\r\n".encode())
    (own["images_dir"] / "item_0000.jpg").rename(own["images_dir"] / "item_0000.JPG")  # suffixes in any case
    (own["labels_dir"] / "item_0000.png").rename(own["labels_dir"] / "item_0000.Png")
    (own["lists_dir"] / "train-hard.txt").write_text("item_0000\nitem_0002\n")
    out = tmp_path / "r"
    convert(None, out, **own, splits="train-hard", verbose=False)
    manifest = convert(None, out, **own, splits="train", verbose=False)  # "train" must not touch "train-hard"
    assert manifest["class_names"] == ["background", "road", "car"]
    assert {s: e["num_examples"] for s, e in manifest["splits"].items()} == {"train-hard": 2, "train": 6}
    for split in ("train", "train-hard"):
        names = sorted(Path(p).name for p in tf.io.gfile.glob(convert_lib.split_glob(out, split)))
        assert names == [f"{split}-00000-of-00001.tfrecord"], names
    assert list(_read_split(out, manifest, "train-hard")) == ["item_0000", "item_0002"]


def test_a_manifest_from_before_the_pixel_counts_is_brought_up_to_date(voc_root, tmp_path):
    """Folders converted before class names and pixel counts were recorded (all VOC / SBD)."""
    out = tmp_path / "r"
    manifest = convert(voc_root, out, verbose=False)
    old = json.loads(json.dumps(manifest))
    del old["class_names"]
    for entry in old["splits"].values():
        for record in (entry, *entry["shards"]):
            del record["class_pixels"], record["class_image_pixels"], record["void_pixels"]
    (out / "manifest.json").write_text(json.dumps(old))
    assert convert_lib.manifest_class_names(convert_lib.read_manifest(out)) == VOC_CLASSES
    stamp = (out / "train-00000-of-00001.tfrecord").stat().st_mtime_ns
    again = convert(voc_root, out, splits=("train",), verbose=False)
    assert (out / "train-00000-of-00001.tfrecord").stat().st_mtime_ns != stamp  # rewritten to count its pixels
    for key in ("class_pixels", "class_image_pixels"):
        assert again["splits"]["train"][key] == manifest["splits"]["train"][key]
    assert again["class_names"] == list(VOC_CLASSES) and "class_pixels" not in again["splits"]["val"]  # val: as it was


def _mask_value_beyond_the_classes(own) -> str:
    path = own["labels_dir"] / "item_0002.png"
    label = _indices(path)
    label[3, 4] = 3
    Image.fromarray(label, mode="L").save(path)
    return r"masks/item_0002.png: mask values outside \{0..2, 255\}: \[3\]"


def _two_images_for_one_id(own) -> str:
    Image.new("RGB", (48, 40)).save(own["images_dir"] / "item_0002.png")
    return r"id 'item_0002' has several images: item_0002.jpg, item_0002.png \(keep one\)"


def _two_masks_for_one_id(own) -> str:
    (own["labels_dir"] / "item_0002.PNG").write_bytes((own["labels_dir"] / "item_0002.png").read_bytes())
    return r"id 'item_0002' has several masks: item_0002.PNG, item_0002.png \(keep one\)"


def _sixteen_bit_png_image(own) -> str:
    path = own["images_dir"] / "item_0001.png"
    with Image.open(path) as png:
        width, height = png.size
    Image.fromarray(np.zeros((height, width), np.uint16), mode="I;16").save(path)
    return r"images/item_0001.png: image is a 16-bit PNG; expected 8 bits per channel"


@pytest.mark.parametrize("breaker", [_mask_value_beyond_the_classes, _two_images_for_one_id, _two_masks_for_one_id,
                                     _sixteen_bit_png_image],
                         ids=lambda f: f.__name__.strip("_"))
def test_own_dataset_invalid_pairs_name_the_file(own, tmp_path, breaker):
    match = breaker(own)
    with pytest.raises(voc.InvalidPairError, match=match):
        convert(None, tmp_path / "r", **own, splits=("train",), verbose=False)
    manifest = convert(None, tmp_path / "r", **own, splits=("train",), skip_invalid=True, verbose=False)
    assert (manifest["splits"]["train"]["num_examples"], manifest["splits"]["train"]["num_skipped"]) == (5, 1)


def test_own_dataset_lists_pairs_of_paths_for_nested_folders_and_suffixes(own, tmp_path):
    """Cityscapes-like: images in city folders with a suffix, masks under another root with
    another; the list names each pair by its paths (tab-separated when one holds a space, an
    absolute mask path as it is), ids may be mixed in, and each record's id is the image's stem."""
    root = tmp_path / "city"
    lines, expected = [], {}
    for index, image in enumerate(sorted(own["images_dir"].iterdir())[:6]):
        city = ("aachen", "bad honnef", "")[index % 3]
        stem = image.stem
        if not city:  # An id line: the files keep their flat names.
            for source, folder in ((image, "images"), (own["labels_dir"] / f"{stem}.png", "masks")):
                (root / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, root / folder / source.name)
            lines.append(stem)
            expected[stem] = stem
            continue
        image_rel = f"{city}/{stem}_leftImg8bit{image.suffix}"
        mask_rel = f"{city}/{stem}_gtFine_labelIds.png"
        for source, target in ((image, root / "images" / image_rel), (own["labels_dir"] / f"{stem}.png", root / "masks" / mask_rel)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
        mask = root / "masks" / mask_rel if index == 4 else mask_rel  # An absolute path, as it is.
        lines.append(f"{image_rel}\t{mask}" if " " in city else f"{image_rel} {mask}")
        expected[f"{stem}_leftImg8bit"] = stem
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("\n".join(lines) + "\n")
    layout = {**own, "images_dir": root / "images", "labels_dir": root / "masks", "lists_dir": root / "lists"}
    manifest = convert(None, tmp_path / "out", **layout, splits=("train",), verbose=False)
    examples = _read_split(tmp_path / "out", manifest, "train")
    assert sorted(examples) == sorted(expected) and manifest["splits"]["train"]["num_skipped"] == 0
    for image_id, stem in expected.items():
        np.testing.assert_array_equal(examples[image_id]["label"], _indices(own["labels_dir"] / f"{stem}.png"))
    # An id with VOC's integer second column is an id, not a pair.
    (root / "lists" / "flagged.txt").write_text(f"{lines[2]} 1\n{lines[2]}x -1\n")
    _, flagged, problems = voc.resolve_folder_pairs("flagged", layout["images_dir"], layout["labels_dir"], root / "lists")
    assert [pair.image_id for pair in flagged] == [lines[2]] and "absent on disk" in problems[0].problem
    # A line of three fields is refused, naming the list and the line.
    (root / "lists" / "bad.txt").write_text(f"{lines[0]}\na b c\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2 \('a b c'\): expected an id, or an image path and a mask path"):
        convert(None, tmp_path / "bad", **layout, splits=("bad",), verbose=False)
    # A missing mask and an image stem listed twice are problems of their pairs, skipped and counted.
    (root / "lists" / "broken.txt").write_text(
        f"{lines[0]}\n{lines[1]}\n{lines[0].split()[0]} other.png\n"  # The image of line 1 again.
        f"{lines[3].split()[0]} aachen/nothing.png\nbad honnef/nothing_leftImg8bit.png\tnowhere.png\n")
    with pytest.raises(ValueError, match=r"duplicate id '\w+_leftImg8bit' on lines 1 and 3 \(a pair's id is its image's"):
        convert(None, tmp_path / "broken", **layout, splits=("broken",), verbose=False)
    broken = convert(None, tmp_path / "broken", **layout, splits=("broken",), skip_invalid=True, verbose=False)
    assert (broken["splits"]["broken"]["num_examples"], broken["splits"]["broken"]["num_skipped"]) == (2, 3)
    report = json.loads((tmp_path / "broken" / "skipped.json").read_text())
    assert [(problem["path"].endswith(ending), problem["problem"].split(" ")[0]) for problem, ending in
            zip(report, ("broken.txt", "aachen/nothing.png", "broken.txt"))] == [(True, "duplicate"), (True, "mask"),
                                                                                (True, "id")]
    assert "'nothing_leftImg8bit' (line 5) is listed but absent on disk" in report[2]["problem"]


def test_own_dataset_bad_arguments(own, voc_root, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match=r"needs images_dir, labels_dir, lists_dir and class_names; missing: class_names"):
        convert(None, out, **{**own, "class_names": None})
    with pytest.raises(ValueError, match=r"drop voc_root\. Received: voc_root="):
        convert(voc_root, out, **own)
    with pytest.raises(ValueError, match=r"class_names describes a dataset of your own \(with images_dir\)"):
        convert(voc_root, out, class_names="voc")
    with pytest.raises(ValueError, match=r"voc_root must be a VOCdevkit folder \(SBD's own splits need only sbd_root; or pass images_dir"):
        convert(None, out)
    with pytest.raises(ValueError, match=r"split names must be letters.*Received: split='train/x'"):
        convert(None, out, **own, splits=("train/x",))
    with pytest.raises(ValueError, match=r"no id list for split 'test': .*test.txt does not exist \(lists there: \['train', 'val'\]\)"):
        convert(None, out, **own, splits=("test",))
    with pytest.raises(ValueError, match=r"labels_dir must be a folder\. Received: labels_dir="):
        convert(None, out, **{**own, "labels_dir": tmp_path / "nowhere"})
    (tmp_path / "one.txt").write_text("\ufeffroad\n\n")
    for names, match in [(tmp_path / "one.txt", r"2 to 255 class names.*Received: 1 in class_names file"),
                         ("classes.txt", r"class_names file 'classes.txt' does not exist"),
                         ("a,b,a", r"distinct; repeated: \['a'\]"), ("a,,b", r"must not be empty")]:
        with pytest.raises(ValueError, match=match):
            convert(None, out, **{**own, "class_names": names})
    assert not out.exists() or not list(out.glob("*.tfrecord"))
    # Splits of other classes kept in the folder would be read with the wrong names: refused.
    convert(voc_root, out, splits=("val",), verbose=False)
    with pytest.raises(ValueError, match=r"holds splits \['val'\] of a dataset with other classes \(21: background"):
        convert(None, out, **own, splits=("train",), verbose=False)


def test_cli_converts_a_dataset_of_your_own(own, tmp_path):
    out = tmp_path / "records"
    done = _cli(f"--images_dir={own['images_dir']}", f"--labels_dir={own['labels_dir']}", f"--lists_dir={own['lists_dir']}",
                f"--class_names={own['class_names']}", f"--output_dir={out}")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^train: 6 examples in 1 shard\(s\), 0 skipped; 3 of 3 classes present, \d+\.\d% void pixels$",
                     done.stdout, re.MULTILINE), done.stdout
    assert json.loads((out / "manifest.json").read_text())["class_names"] == ["background", "road", "car"]
    both = _cli("--voc_root=x", f"--images_dir={own['images_dir']}", f"--output_dir={out}")
    assert both.returncode == 2 and "--voc_root converts PASCAL VOC: drop --images_dir" in both.stderr
    some = _cli(f"--images_dir={own['images_dir']}", f"--class_names={own['class_names']}", f"--output_dir={out}")
    assert some.returncode == 2 and "missing: --labels_dir, --lists_dir\n" in some.stderr, some.stderr


# --- Colour-coded masks -----------------------------------------------------------------------

#: A colour table for the own dataset's classes (background, road, car): "car" has two colours.
COLOURS = {"background": [(0, 0, 0)], "road": [(128, 64, 128)], "car": [(64, 0, 128), (64, 0, 129)], "void": [(255, 255, 255)]}
COLOURS_FILE = """# CamVid-style: a header, names or indices, comments
name,r,g,b
background,0,0,0
1 128 64 128   # road, by its index
car 64 0 128
car,64,0,129
void 255 255 255
"""


def _paint(index: np.ndarray, colour_of: dict[int, tuple[int, int, int]]) -> np.ndarray:
    rgb = np.zeros((*index.shape, 3), np.uint8)
    for label, colour in colour_of.items():
        rgb[index == label] = colour
    return rgb


def _colour_masks(own, tmp_path, colour_of: dict[int, tuple[int, int, int]]) -> dict:
    """The own dataset with its masks painted (PNG modes RGB, RGBA and palette in turn)."""
    labels_dir = tmp_path / "colour_masks"
    labels_dir.mkdir()
    for number, path in enumerate(sorted(own["labels_dir"].glob("*.png"))):
        rgb = Image.fromarray(_paint(_indices(path), colour_of), mode="RGB")
        mask = (rgb, rgb.convert("RGBA"), rgb.quantize(colors=8, method=Image.Quantize.MAXCOVERAGE))[number % 3]
        mask.save(labels_dir / path.name)
        assert mask.mode == ("RGB", "RGBA", "P")[number % 3]
    return {**own, "labels_dir": labels_dir}


def test_colour_coded_masks_give_the_same_records_as_index_masks(own, tmp_path):
    reference = convert(None, tmp_path / "indices", **own, verbose=False)
    # "car" (2) in its second colour on the right half of every mask: both colours are read as car.
    colour_of = {0: COLOURS["background"][0], 1: COLOURS["road"][0], 2: COLOURS["car"][0], 255: COLOURS["void"][0]}
    painted = _colour_masks(own, tmp_path, colour_of)
    for path in painted["labels_dir"].glob("*.png"):
        with Image.open(path) as png:
            mode, rgb = png.mode, np.array(png.convert("RGB"))
        rgb[:, rgb.shape[1] // 2 :][(rgb[:, rgb.shape[1] // 2 :] == (64, 0, 128)).all(-1)] = (64, 0, 129)
        Image.fromarray(rgb).convert(mode if mode != "P" else "RGB").save(path)
    (tmp_path / "colours.csv").write_text(COLOURS_FILE)
    out = tmp_path / "colours"
    manifest = convert(None, out, **painted, label_colours=tmp_path / "colours.csv", shard_size=4, verbose=False)
    assert manifest["source"]["label_colours"] == [[0, 0, 0, 0], [64, 0, 128, 2], [64, 0, 129, 2], [128, 64, 128, 1],
                                                   [255, 255, 255, 255]]
    for split in ("train", "val"):
        expected = _read_split(tmp_path / "indices", reference, split)
        examples = _read_split(out, manifest, split)
        assert list(examples) == list(expected)
        for image_id, example in examples.items():
            np.testing.assert_array_equal(example["label"], expected[image_id]["label"])
        assert manifest["splits"][split]["class_pixels"] == reference["splits"][split]["class_pixels"]
        assert manifest["splits"][split]["void_pixels"] == reference["splits"][split]["void_pixels"] > 0
    # Same colours: every shard kept. Another colour map: every shard rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    convert(None, out, **painted, label_colours=tmp_path / "colours.csv", shard_size=4, verbose=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == stamps
    (tmp_path / "swapped.csv").write_text(COLOURS_FILE.replace("1 128 64 128", "0 128 64 128").replace("background", "road"))
    swapped = convert(None, out, **painted, label_colours=tmp_path / "swapped.csv", shard_size=4, verbose=False)
    assert not set({p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}.items()) & set(stamps.items())
    counts = reference["splits"]["train"]["class_pixels"]
    assert swapped["splits"]["train"]["class_pixels"] == [counts[1], counts[0], counts[2]]


def test_voc_colours_and_masks_whose_colours_are_not_in_the_map(own, tmp_path):
    voc_colours = {label: tuple(int(v) for v in VOC_PALETTE[label]) for label in (0, 1, 2, 255)}
    painted = _colour_masks(own, tmp_path, voc_colours)
    reference = convert(None, tmp_path / "indices", **own, splits=("val",), verbose=False)
    manifest = convert(None, tmp_path / "voc", **painted, splits=("val",), label_colours="voc", verbose=False)
    for image_id, example in _read_split(tmp_path / "voc", manifest, "val").items():
        np.testing.assert_array_equal(example["label"], _indices(own["labels_dir"] / f"{image_id}.png"))
    assert manifest["splits"]["val"]["class_pixels"] == reference["splits"]["val"]["class_pixels"]
    assert manifest["source"]["label_colours"][-1] == [224, 224, 192, 255]  # VOC's void colour
    # A resized (blended) mask has colours of no class: refused with their pixel counts, or skipped.
    path = painted["labels_dir"] / "item_0001.png"
    with Image.open(path) as png:
        rgb = np.array(png.convert("RGB"))
    rgb[0, :3], rgb[1, :2] = (10, 20, 30), (1, 2, 3)
    Image.fromarray(rgb).save(path)
    with pytest.raises(voc.InvalidPairError, match=r"masks/item_0001.png: 5 pixels have 2 colour\(s\) not in voc: "
                                                   r"\(10, 20, 30\) x 3, \(1, 2, 3\) x 2 \(exact colours only"):
        convert(None, tmp_path / "r", **painted, splits=("train",), label_colours="voc", verbose=False)
    skipped = convert(None, tmp_path / "r", **painted, splits=("train",), label_colours="voc", skip_invalid=True, verbose=False)
    assert (skipped["splits"]["train"]["num_examples"], skipped["splits"]["train"]["num_skipped"]) == (5, 1)
    # Index masks read through colours: gray (1, 1, 1) is no colour of the map.
    with pytest.raises(voc.InvalidPairError, match=r"masks/item_0000.png: \d+ pixels have \d colour\(s\) not in voc"):
        convert(None, tmp_path / "r2", **own, splits=("train",), label_colours="voc", verbose=False)
    # 16 bits per channel: refused rather than rounded.
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((4, 4), np.uint16), mode="I;16").save(deep)
    with pytest.raises(voc.InvalidPairError, match=r"deep.png: colour mask is a mode-I;16, 16-bit PNG"):
        voc.read_label(deep, voc.read_label_colours("voc", ("a", "b")))


def test_a_voc_copy_with_colour_masks_converts_with_label_colours(voc_root, tmp_path):
    """Found by review: an RGB mask's error said to pass --label_colours, which --voc_root refused."""
    reference = convert(voc_root, tmp_path / "indices", splits=("val",), verbose=False)
    masks = voc_root / "VOC2012/SegmentationClass"
    for path in masks.glob("*.png"):
        Image.fromarray(VOC_PALETTE[_indices(path)]).save(path)  # RGB, VOC's colours
    with pytest.raises(voc.InvalidPairError, match=r"mask is a mode-RGB PNG; .*label_colours='voc' for VOC's colours"):
        convert(voc_root, tmp_path / "refused", splits=("val",), verbose=False)
    coloured = convert(voc_root, tmp_path / "colours", splits=("val",), label_colours="voc", verbose=False)
    assert coloured["splits"]["val"]["shards"][0]["sha256"] == reference["splits"]["val"]["shards"][0]["sha256"]
    assert coloured["source"]["label_colours"][-1] == [224, 224, 192, 255]
    result = _cli(f"--voc_root={voc_root}", f"--output_dir={tmp_path / 'cli'}", "--splits=val", "--label_colours=voc", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "cli/manifest.json").read_text())["splits"]["val"]["shards"][0]["sha256"] == \
        reference["splits"]["val"]["shards"][0]["sha256"]
    # SBD's splits alone from the command line, without --voc_root.
    make_synthetic_sbd(tmp_path / "sbd", voc_root, ["synth_000000", "synth_000001"])
    result = _cli(f"--sbd_root={tmp_path / 'sbd'}", f"--output_dir={tmp_path / 'sbd_records'}", "--splits=sbd_train", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "sbd_records/manifest.json").read_text())["splits"]["sbd_train"]["num_examples"] == 1


def test_id_masks_convert_through_a_map_of_gray_levels(own, tmp_path):
    """Masks of dataset ids, not class indices (Cityscapes' labelIds: road is 7, car 26, unlabelled
    0), as grayscale PNGs: level v is the colour (v, v, v), so a map of gray colours remaps them;
    an id the map leaves out is refused by its level and pixel count."""
    ids = {0: 3, 1: 7, 2: 26, 255: 0}
    labels_dir = tmp_path / "id_masks"
    labels_dir.mkdir()
    for path in sorted(own["labels_dir"].glob("*.png")):
        Image.fromarray(_paint(_indices(path), {label: (v, v, v) for label, v in ids.items()})[..., 0], mode="L").save(
            labels_dir / path.name)
    (tmp_path / "ids.txt").write_text("background 3 3 3\nroad 7\ncar 26\nvoid 0\n")  # Gray: V or V V V.
    with_ids = {**own, "labels_dir": labels_dir}
    manifest = convert(None, tmp_path / "out", **with_ids, splits=("val",), label_colours=tmp_path / "ids.txt", verbose=False)
    for image_id, example in _read_split(tmp_path / "out", manifest, "val").items():
        np.testing.assert_array_equal(example["label"], _indices(own["labels_dir"] / f"{image_id}.png"))
    (tmp_path / "ids.txt").write_text("background 3\nroad 7\nvoid 0\n")  # No car.
    with pytest.raises(voc.InvalidPairError, match=r"id_masks/item_\d+.png: \d+ pixels have 1 colour\(s\) not in "
                                                   r"label_colours file '.*ids.txt': \(26, 26, 26\) x \d+"):
        convert(None, tmp_path / "out2", **with_ids, splits=("val",), label_colours=tmp_path / "ids.txt", verbose=False)


@pytest.mark.parametrize("text, match", [
    ("", r"lists no colour"),
    ("car 1 2\n", r"line 1 \('car 1 2'\): expected '<label> R G B' or '<label> V'"),
    ("car\n", r"line 1 \('car'\): expected '<label> R G B' or '<label> V'"),
    ("road 256\n", r"line 1 \('road 256'\): V must be integers 0..255"),
    ("lane 2 7\n", r"line 1 \('lane 2 7'\): expected '<label> R G B' or '<label> V'"),  # 'lane 2 7 7 7' reads
    ("road 1 2 256\n", r"line 1 \('road 1 2 256'\): R, G and B must be integers 0..255"),
    ("road 1 2 -3\n", r"R, G and B must be integers"),
    ("road 1 2 \u00b2\n", r"R, G and B must be integers"),
    ("bus 1 2 3\n", r"line 1 \('bus 1 2 3'\): 'bus' is not a class of the dataset \(3: background, road, car\), an index 0..2"),
    ("3 1 2 3\n", r"'3' is not a class"),
    ("# x\nroad 1 2 3\ncar 1 2 3\n", r"colour \(1, 2, 3\) is given two labels, 1 and 2"),
    ("road 1 2 3\nname,r,g,b\n", r"line 2 \('name,r,g,b'\): expected '<label> R G B'"),
])
def test_bad_label_colours_files_name_the_line(tmp_path, text, match):
    path = tmp_path / "colours.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"label_colours file '.*colours.txt'.*" + match):
        voc.read_label_colours(path, ("background", "road", "car"))


def test_label_colours_names_indices_void_and_a_missing_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\ufeffpotted plant 1 2 3\r\n0,4,5,6\r\nvoid 7 8 9\n255 7 8 9\n\npotted plant 10 11 12\n"
                    "potted plant 30\nvoid,0\n1 40\n")  # Gray levels: (30, 30, 30), (0, 0, 0), (40, 40, 40).
    colours = voc.read_label_colours(path, ("background", "potted plant"))
    assert colours.to_json() == [[0, 0, 0, 255], [1, 2, 3, 1], [4, 5, 6, 0], [7, 8, 9, 255], [10, 11, 12, 1],
                                 [30, 30, 30, 1], [40, 40, 40, 1]]
    labels, unknown, counts = colours.labels_of(np.array([[[4, 5, 6], [10, 11, 12], [7, 8, 9], [9, 9, 9]]], np.uint8))
    assert labels.tolist() == [[0, 1, 255, 0]] and unknown.tolist() == [9 << 16 | 9 << 8 | 9] and counts.tolist() == [1]
    # The first colour of a label paints it (predict's label PNGs); labels the map leaves out keep VOC's.
    assert colours.palette[[0, 1, 255]].tolist() == [[4, 5, 6], [1, 2, 3], [7, 8, 9]]
    assert colours.palette[2].tolist() == VOC_PALETTE[2].tolist()
    path.write_text("lane 2 7 7 7\n")  # A class name ending in a number takes the R G B form.
    assert voc.read_label_colours(path, ("background", "lane 2")).to_json() == [[7, 7, 7, 1]]
    with pytest.raises(ValueError, match=r"cannot read label_colours file '.*nowhere.txt' \(label_colours is 'voc' or a file"):
        voc.read_label_colours(tmp_path / "nowhere.txt", ("a", "b"))


def test_cli_converts_colour_coded_masks(own, tmp_path):
    painted = _colour_masks(own, tmp_path, {0: (0, 0, 0), 1: (128, 64, 128), 2: (64, 0, 128), 255: (255, 255, 255)})
    (tmp_path / "colours.csv").write_text(COLOURS_FILE)
    out = tmp_path / "records"
    done = _cli(f"--images_dir={painted['images_dir']}", f"--labels_dir={painted['labels_dir']}",
                f"--lists_dir={own['lists_dir']}", f"--class_names={own['class_names']}",
                f"--label_colours={tmp_path / 'colours.csv'}", f"--output_dir={out}", "--splits=val")
    assert done.returncode == 0, done.stderr
    assert "val: 3 examples in 1 shard(s), 0 skipped; 3 of 3 classes present" in done.stdout
    refused = _cli("--voc_root=x", "--class_names=a,b", f"--output_dir={out}")  # --label_colours is VOC's too.
    assert refused.returncode == 2 and "--voc_root converts PASCAL VOC: drop --class_names" in refused.stderr
