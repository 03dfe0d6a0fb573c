"""The canvas-against-exact comparison: the distance geometry by hand, the counts on crafted label
maps, and the whole measurement on a tiny FCN against two independent evaluate_model calls."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.canvas_effect import (
    EFFECT_JSON,
    EFFECT_MD,
    band_names,
    canvas_effect,
    changes_by_distance,
    effect_markdown,
    padding_distance,
)
from fcn_keras.evaluate import evaluate_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_padding_distance_counts_from_the_first_padded_row_and_column():
    np.testing.assert_array_equal(padding_distance(2, 3, (4, 3)), [[2, 2, 2], [1, 1, 1]])  # padded below
    np.testing.assert_array_equal(padding_distance(2, 3, (2, 5)), [[3, 2, 1], [3, 2, 1]])  # padded right
    np.testing.assert_array_equal(padding_distance(2, 3, (3, 4)), [[2, 2, 1], [1, 1, 1]])  # both: the nearer
    np.testing.assert_array_equal(padding_distance(2, 3, (2, 3)), np.zeros((2, 3)))  # fills the canvas
    with pytest.raises(ValueError, match="an image of 5x3 does not fit the canvas 4x3"):
        padding_distance(5, 3, (4, 3))


def test_changes_are_counted_in_their_distance_band():
    assert band_names((8, 32)) == ["1-8", "9-32", "> 32", "no padding"]
    # A 40x40 image on a 40x80 canvas (padded right: distance = 40 - x) and a 40x80 one that fills it.
    exact = [np.zeros((40, 40), np.uint8), np.zeros((40, 80), np.uint8)]
    padded = [a.copy() for a in exact]
    padded[0][5, 39] = 1  # distance 1
    padded[0][6, 32] = 1  # distance 8: the last of band 1-8
    padded[0][7, 31] = 1  # distance 9
    padded[0][:2, 0] = 1  # distance 40, two pixels
    padded[1][0, 0] = 3  # no padding
    counts = changes_by_distance(exact, padded, (40, 80), bands=(8, 32))
    assert counts == {
        "1-8": {"pixels": 8 * 40, "changed": 2},
        "9-32": {"pixels": 24 * 40, "changed": 1},
        "> 32": {"pixels": 8 * 40, "changed": 2},
        "no padding": {"pixels": 40 * 80, "changed": 1},
    }
    with pytest.raises(ValueError, match=r"image 0: exact label map \(40, 40\) but padded one \(40, 39\)"):
        changes_by_distance(exact[:1], [padded[0][:, :39]], (40, 80))
    with pytest.raises(ValueError, match="2 exact label maps but 1 padded ones"):
        changes_by_distance(exact, padded[:1], (40, 80))


def test_canvas_effect_compares_two_independent_evaluations(eval_workspace):
    canvas = (64, 72)
    result = canvas_effect(eval_workspace["model"], eval_workspace["voc"], canvas=canvas, batch_size=2,
                           cache_dir=eval_workspace["cache"], verbose=False)
    common = {"cache_dir": eval_workspace["cache"], "keep_predictions": 5, "verbose": False}
    exact = evaluate_model(eval_workspace["model"], eval_workspace["voc"], **common)
    padded = evaluate_model(eval_workspace["model"], eval_workspace["voc"], batch_size=2, canvas=canvas, **common)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        assert result["exact"][key] == exact[key] and result["canvas"][key] == padded[key]
        assert result["difference"][key] == pytest.approx(padded[key] - exact[key])
    assert result["exact"]["num_images"] == result["canvas"]["num_images"] == 5
    assert result["canvas"]["canvas"] == list(canvas) and result["exact"]["canvas"] is None
    changed = sum(int((a != b).sum()) for a, b in zip(exact["predictions"], padded["predictions"]))
    assert result["changed_pixels"] == changed > 0  # 'same' padding differs from the mean-colour canvas.
    assert result["num_pixels"] == sum(p.size for p in exact["predictions"])
    assert result["by_distance"]["no padding"] == {"pixels": 0, "changed": 0}  # no image fills 64x72
    assert result["model"] == str(eval_workspace["model"])
    markdown = effect_markdown(result)
    assert effect_markdown(json.loads(json.dumps(result, sort_keys=True))) == markdown  # As canvas_effect.json holds it.
    rows = [line.split(" | ")[0][2:] for line in markdown.splitlines() if line.startswith("| ") and line.count("|") == 5]
    assert rows[1:] == band_names()  # After the heading row, nearest the padding first.
    assert f"{result['changed_pixels']:,} of {result['num_pixels']:,} pixels" in markdown
    assert "batches of 2 padded to a 64x72 canvas" in markdown and "one at a time, exact" in markdown
    assert f"{100 * result['difference']['mean_iu']:+.2f}" in markdown


def test_cli_writes_the_report_and_names_bad_input(eval_workspace, tmp_path):
    out = tmp_path / "effect"
    command = [sys.executable, "-m", "experiments.canvas_effect", f"--model={eval_workspace['model']}",
               f"--data={eval_workspace['voc']}", f"--cache_dir={eval_workspace['cache']}", "--batch_size=2", "--max_images=3"]
    result = subprocess.run([*command, "--canvas=64x72", f"--output_dir={out}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    written = json.loads((out / EFFECT_JSON).read_text())
    assert written["exact"]["num_images"] == written["canvas"]["num_images"] == 3
    assert "experiments.canvas_effect" in written["run"]["command"] and written["run"]["backend"] == "tensorflow"
    assert (out / EFFECT_MD).read_text() in result.stdout + "\n"
    # Bad input is refused before either evaluation (found by review: after the exact one, or both).
    result = subprocess.run([*command, "--canvas=16"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "images larger than canvas=(16, 16) (height, width), e.g. " in result.stderr
    assert "/image" not in result.stdout  # No progress line: nothing was evaluated.
    (tmp_path / "a_file").write_text("")
    result = subprocess.run([*command, "--canvas=64x72", f"--output_dir={tmp_path / 'a_file' / 'out'}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "output_dir must be a folder. Received: output_dir=" in result.stderr and "/image" not in result.stdout
