"""The skip-architecture experiment driver: results writing, stage configs, the --smoke protocol."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import skip_experiment as exp
from fcn_keras.constants import VOC_CLASSES
from fcn_keras.data.synthetic import make_synthetic_voc
from fcn_keras.evaluate import PAPER_METRICS

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = [key for key, _ in PAPER_METRICS]


# --- Results writing on given metrics --------------------------------------------------------


def _entry(metrics: dict[str, float], per_class: list, seconds: float) -> dict:
    return {"stage": "x", "variant": "8s", "at_once": False, "init": "init", "metrics": metrics,
            "per_class_iu": per_class, "eval_images": 5, "eval_pixels": 100,
            "eval_seconds": 9.5,
            "training": {"steps": 40, "wall_time_s": seconds, "images_per_s": 12.5, "first_step_s": 21.0,
                         "steady_images_per_s": 300.0}}


def test_write_results_table_from_given_metrics(tmp_path):
    per_class = [0.9] + [None] * 19 + [0.25]
    models = {title: _entry({k: v / 100 for k, v in paper.items()}, per_class, 60.0)
              for title, paper in exp.PAPER_TABLE2.items()}
    models["FCN-8s at-once"] = _entry({"pixel_accuracy": 0.9, "mean_accuracy": 0.7, "mean_iu": 0.617,
                                       "fw_iu": 0.8}, per_class, 180.0)
    results = {
        "name": "given", "models": models, "paper": exp.PAPER_TABLE2, "class_names": list(VOC_CLASSES),
        "data": {"num_train": 311, "num_eval": 221, "eval_split": "val", "source": "voc", "folder": "f",
                 "train_glob": "t", "eval_glob": "v"},
        "run": {"command": "python -m experiments.skip_experiment --data=x", "git_commit": "abc", "backend": "jax",
                "device": "gpu: H100", "versions": {"keras": "3"}, "date": "today"},
        "figures": {"comparison": "comparison.png", "training_curves": "training_curves.png"},
    }
    paths = exp.write_results(results, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == results
    text = paths["markdown"].read_text()
    # Our table: the given fractions in %, then init, steps, time, throughput.
    assert "| FCN-16s | 90.0 | 75.7 | 62.4 | 83.0 | init | 40 | 60.0 | 12.5 |" in text
    assert "| FCN-8s at-once | 90.0 | 70.0 | 61.7 | 80.0 | init | 40 | 180.0 | 12.5 |" in text
    assert "| FCN-32s | 89.1 | 73.3 | 59.4 | 81.4 |" in text  # the paper's table
    assert "| FCN-8s at-once | 180.0 | 21.0 | 300.0 | 9.5 |" in text  # the time table
    assert "Mean IU rises along the stages: FCN-32s 59.4 -> FCN-16s 62.4 -> FCN-8s 62.7." in text
    assert "Each later stage also trained longer" in text  # no controls: the rise is not the skips' alone
    assert "-1.0 points against the staged FCN-8s" in text
    assert "| background | 90.0 | 90.0 | 90.0 | 90.0 |" in text and "| boat | - | - | - | - |" in text
    assert "| tvmonitor | 25.0 | 25.0 | 25.0 | 25.0 |" in text
    assert "Commit: abc" in text and "gpu: H100" in text and "311 training images" in text
    assert "Partial" not in text

    # What a call stopped after FCN-32s leaves: the row, marked partial.
    partial = {**results, "complete": False, "planned": ["FCN-32s", "FCN-16s", "FCN-8s"],
               "models": {"FCN-32s": models["FCN-32s"]}}
    text = exp.write_results(partial, tmp_path / "partial")["markdown"].read_text()
    assert ("**Partial results**: 1 of the 3 planned models (FCN-32s, FCN-16s, FCN-8s) trained and evaluated so "
            "far; the same command continues.") in text
    assert "| FCN-32s | 89.1 | 73.3 | 59.4 | 81.4 | init |" in text and "Mean IU so far: FCN-32s 59.4." in text

    models["FCN-16s"]["metrics"]["mean_iu"] = models["FCN-8s"]["metrics"]["mean_iu"]  # a tie does not rise
    assert "does not rise monotonically" in exp.results_markdown(results)
    models["FCN-16s"]["metrics"]["mean_iu"] = 0.70  # above FCN-8s: not monotonic any more
    assert "does not rise monotonically" in exp.results_markdown(results)
    assert not list((tmp_path / "out").glob(".*.tmp-*"))  # atomic writes leave no temporary files


def test_findings_name_one_seed_and_the_extra_training():
    ious = {"FCN-32s": 0.50, "FCN-16s": 0.55, "FCN-8s": 0.56, "FCN-32s trained as FCN-16s": 0.52}
    models = {title: {"metrics": {"mean_iu": iu}} for title, iu in ious.items()}
    text = "\n".join(exp.findings(models))
    assert "+3.0 points with the skips, from one seed (one training run each" in text
    assert "Each later stage also trained longer" not in text  # the controls separate it
    del models["FCN-32s trained as FCN-16s"]
    assert ("Each later stage also trained longer (it continues the one before), so this includes the extra "
            "training, not only the skips: --controls separates the two.") in exp.findings(models)[0]


def test_a_table_refuses_models_evaluated_differently():
    entry = {"eval_images": 3, "eval_mode": "batches of 2 padded to a 48x56 canvas"}
    assert exp.common_evaluation({"FCN-32s": entry, "FCN-16s": dict(entry)}) == {
        "num_eval": 3, "eval_mode": "batches of 2 padded to a 48x56 canvas"}
    with pytest.raises(ValueError, match=r"different image sets.*FCN-32s: 3 images.*FCN-16s: 2 images.*--eval_max_images"):
        exp.common_evaluation({"FCN-32s": entry, "FCN-16s": {**entry, "eval_images": 2}})
    with pytest.raises(ValueError, match="FCN-16s: 3 images, one at a time, exact"):
        exp.common_evaluation({"FCN-32s": entry, "FCN-16s": {**entry, "eval_mode": "one at a time, exact"}})


def test_evaluation_changes_compare_the_recorded_evaluation(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"val": {"num_examples": 3}}}))
    settings = exp.ExperimentSettings(data="", output_dir=str(tmp_path / "out"), eval_batch_size=2, eval_canvas="48x56")
    recorded = {"split": "val", "batch_size": 2, "canvas": [48, 56], "num_images": 3}
    assert exp.evaluation_changes(recorded, settings, str(tmp_path)) == []
    # More images asked than the split holds: the same evaluation.
    assert exp.evaluation_changes(recorded, dataclasses.replace(settings, eval_max_images=5), str(tmp_path)) == []
    changed = dataclasses.replace(settings, eval_max_images=2, eval_batch_size=1, eval_canvas="")
    assert exp.evaluation_changes(recorded, changed, str(tmp_path)) == [
        "--eval_batch_size: value 2 -> 1", "--eval_canvas: value [48, 56] -> None",
        "--eval_max_images: images evaluated 3 -> 2"]
    # A stage whose model file was not kept cannot be evaluated again: refused, not mixed in.
    (tmp_path / "out" / "fcn32s" / "eval").mkdir(parents=True)
    (tmp_path / "out" / "fcn32s" / "eval" / "metrics.json").write_text(json.dumps({**recorded, "mean_iu": 0.5}))
    assert exp.evaluate_stage(exp.STAGES[0], settings, str(tmp_path))[0]["reused_without_model"]
    with pytest.raises(ValueError, match=r"fcn32s: no last.keras to evaluate again.*--eval_max_images: images "
                                         r"evaluated 3 -> 2"):
        exp.evaluate_stage(exp.STAGES[0], dataclasses.replace(settings, eval_max_images=2), str(tmp_path))


def test_an_interrupted_stage_is_not_resumed_with_other_settings(tmp_path, monkeypatch):
    settings = exp.ExperimentSettings(data="d", output_dir=str(tmp_path), **{**exp.SMOKE_SETTINGS, "learning_rates": None})
    config = exp.stage_config(exp.STAGES[1], settings, "records")
    run_dir = Path(config.output_dir)
    run_dir.mkdir()
    recorded = dataclasses.asdict(exp.resolve_config(dataclasses.replace(config, learning_rate=1e-4)))
    (run_dir / "config.json").write_text(json.dumps({"config": recorded}))  # killed: no summary.json
    trained = []
    monkeypatch.setattr(exp, "train", lambda c: trained.append(c) or {"status": "finished"})
    for summary in (None, {"status": "interrupted", "epochs_done": 1}):
        if summary:
            (run_dir / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(ValueError, match=r"fcn16s holds an interrupted run with other settings \(learning_rate: "
                                             r"0.0001 -> 0.05\).*or delete"):
            exp.run_stage(dataclasses.replace(config, learning_rate=5e-2))
    assert not trained
    assert exp.run_stage(dataclasses.replace(config, learning_rate=1e-4, verbose=0))[1]  # the same settings: resumed
    assert len(trained) == 1


# --- Stage configurations --------------------------------------------------------------------


def test_stage_configs_chain_the_stages(tmp_path):
    settings = exp.ExperimentSettings(data="d", output_dir=str(tmp_path), weights="w.h5", at_once=True, epochs=2,
                                      learning_rates=[1e-4, 1e-5, 1e-6], at_once_learning_rate=3e-5, checkpoint_freq=3)
    stages = exp.stages_of(settings)
    assert [s.name for s in stages] == ["fcn32s", "fcn16s", "fcn8s", "fcn8s_at_once"]
    configs = {s.name: exp.stage_config(s, settings, "records") for s in stages}
    assert configs["fcn32s"].weights == "w.h5" and configs["fcn32s"].init_from == ""
    assert configs["fcn16s"].init_from == str(tmp_path / "fcn32s" / "last.keras")
    assert configs["fcn8s"].init_from == str(tmp_path / "fcn16s" / "last.keras")
    assert configs["fcn16s"].weights == configs["fcn8s"].weights == "none"
    assert [configs[n].learning_rate for n in ("fcn32s", "fcn16s", "fcn8s")] == [1e-4, 1e-5, 1e-6]
    at_once = configs["fcn8s_at_once"]
    assert at_once.at_once and at_once.variant == "8s" and at_once.init_from == "" and at_once.weights == "w.h5"
    assert at_once.epochs == 6 and at_once.learning_rate == 3e-5  # the three stages' budget together
    assert all(c.data == "records" and c.epochs == 2 for n, c in configs.items() if n != "fcn8s_at_once")
    assert len({c.output_dir for c in configs.values()}) == 4
    assert all(c.checkpoint_freq == 3 for c in configs.values())
    assert all((c.train_split, c.val_split) == ("train", "val") for c in configs.values())
    paper_splits = dataclasses.replace(settings, train_split="sbd_train", eval_split="seg11valid")
    assert all((c.train_split, c.val_split) == ("sbd_train", "seg11valid")
               for c in (exp.stage_config(s, paper_splits, "records") for s in stages))
    assert exp.stages_of(exp.ExperimentSettings(data="d", output_dir="o")) == exp.STAGES
    # A time budget bounds FCN-32s only; the later stages then train the epochs it did (found by
    # review: the test set stage_seconds only to 0).
    budgeted = dataclasses.replace(settings, stage_seconds=60.0)
    assert [exp.stage_config(s, budgeted, "records").max_train_seconds for s in stages] == [60.0, 0.0, 0.0, 0.0]
    # Without --epochs, the at-once model still gets the three stages' (train's default) epochs.
    default = exp.ExperimentSettings(data="d", output_dir=str(tmp_path), at_once=True)
    staged = exp.resolve_config(exp.stage_config(exp.STAGES[0], default, "records")).epochs
    assert exp.stage_config(exp.AT_ONCE_STAGE, default, "records").epochs == 3 * staged
    # Controls: FCN-32s continued with the rate and epochs of the stage each mirrors.
    controlled = dataclasses.replace(settings, controls=True, at_once=False)
    names = [s.name for s in exp.stages_of(controlled)]
    assert names == ["fcn32s", "fcn16s", "fcn8s", "fcn32s_as16s", "fcn32s_as8s"]
    # The at-once model (3x the epochs of a stage) comes last: a call cut short has the comparisons first.
    assert [s.name for s in exp.stages_of(dataclasses.replace(controlled, at_once=True))] == [*names, "fcn8s_at_once"]
    as16, as8 = (exp.stage_config(s, controlled, "records") for s in exp.CONTROL_STAGES)
    assert as16.variant == as8.variant == "32s" and (as16.learning_rate, as8.learning_rate) == (1e-5, 1e-6)
    assert as16.init_from == str(tmp_path / "fcn32s" / "last.keras")
    assert as8.init_from == str(tmp_path / "fcn32s_as16s" / "last.keras")
    assert as16.epochs == as8.epochs == 2 and as16.max_train_seconds == 0.0
    # Without --learning_rates, a control takes train's default rate of the variant it mirrors.
    plain = exp.ExperimentSettings(data="d", output_dir=str(tmp_path), controls=True)
    assert exp.stage_config(exp.CONTROL_STAGES[1], plain, "records").learning_rate == exp.resolve_config(
        exp.stage_config(exp.STAGES[2], plain, "records")).learning_rate


# --- The whole protocol on synthetic data ----------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("skip") / "smoke"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "experiments.skip_experiment", "--smoke", f"--output_dir={output}", "--verbose=0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result.stdout


def test_smoke_protocol_writes_parseable_artefacts(smoke_run):
    output, stdout = smoke_run
    results = json.loads((output / exp.RESULTS_JSON).read_text())
    assert results["complete"] and results["planned"] == ["FCN-32s", "FCN-16s", "FCN-8s"]
    assert list(results["models"]) == ["FCN-32s", "FCN-16s", "FCN-8s"]
    for title, entry in results["models"].items():
        assert sorted(entry["metrics"]) == sorted(METRIC_KEYS)
        assert all(0.0 <= entry["metrics"][k] <= 1.0 for k in METRIC_KEYS), title
        assert len(entry["per_class_iu"]) == len(VOC_CLASSES)
        assert entry["eval_images"] == exp.SMOKE_DATA["num_val"]
        assert entry["training"]["steps"] == exp.SMOKE_SETTINGS["steps_per_epoch"] > 0
        assert entry["training"]["wall_time_s"] > 0
        # What was evaluated is what evaluate_model wrote for that stage.
        metrics = json.loads((output / entry["stage"] / "eval" / "metrics.json").read_text())
        assert metrics["mean_iu"] == entry["metrics"]["mean_iu"]
        assert metrics["canvas"] == [48, 56] and metrics["batch_size"] == 2
        with np.load(output / entry["stage"] / "eval" / exp.FIGURE_LABELS) as figure:
            assert len(figure.files) == 2 and figure["image_0"].dtype == np.uint8
    assert results["data"]["eval_mode"] == "batches of 2 padded to a 48x56 canvas"
    assert results["models"]["FCN-16s"]["init"] == "fcn32s/last.keras"
    assert results["data"]["num_train"] == exp.SMOKE_DATA["num_train"]
    assert results["run"]["backend"] and results["run"]["device"] and results["run"]["command"]
    text = (output / exp.RESULTS_MD).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| FCN-")]
    assert len(rows) == 9  # ours, the paper's, and the time table
    for title, entry in results["models"].items():
        assert f"| {title} | {100 * entry['metrics']['pixel_accuracy']:.1f} |" in text
    for name, (width, height) in ((exp.COMPARISON_PNG, (1000, None)), (exp.CURVES_PNG, (None, None))):
        with Image.open(output / name) as image:
            image.load()
            pixels = np.asarray(image)
        assert pixels.ndim == 3 and pixels.std() > 0, name
        if width:
            assert image.width == width  # (2 + 3 models) columns of 200 px
    assert "fcn32s: training FCN-32s" in stdout


def test_smoke_rerun_resumes_without_retraining(smoke_run, monkeypatch):
    output, _ = smoke_run
    before = json.loads((output / exp.RESULTS_JSON).read_text())
    model_time = (output / "fcn8s" / "last.keras").stat().st_mtime
    settings = exp.ExperimentSettings(data="", output_dir=str(output), verbose=0)
    results = exp.run_experiment(settings, smoke=True, command="rerun")
    assert (output / "fcn8s" / "last.keras").stat().st_mtime == model_time
    for title, entry in results["models"].items():
        assert entry["metrics"] == before["models"][title]["metrics"]
    assert results["run"]["command"] == "rerun"
    # A finished evaluation is reused with its saved figure label maps: no model is evaluated again.
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluate_model called for a stage evaluated earlier")

    monkeypatch.setattr(exp, "evaluate_model", no_evaluation)
    smoke_settings = dataclasses.replace(settings, **exp.SMOKE_SETTINGS, figure_images=2)
    evaluation, labels = exp.evaluate_stage(exp.STAGES[2], smoke_settings, results["data"]["folder"])
    assert evaluation["mean_iu"] == before["models"]["FCN-8s"]["metrics"]["mean_iu"]
    with np.load(output / "fcn8s" / "eval" / exp.FIGURE_LABELS) as figure:
        assert len(labels) == 2 and all(np.array_equal(labels[i], figure[f"image_{i}"]) for i in range(2))
    # Other evaluation flags: evaluated again, not the earlier evaluation reused.
    for changed_eval in ({"eval_max_images": 2}, {"eval_batch_size": 1}, {"eval_canvas": "64"}, {"figure_images": 3}):
        with pytest.raises(AssertionError, match="evaluate_model called"):
            exp.evaluate_stage(exp.STAGES[2], dataclasses.replace(smoke_settings, **changed_eval),
                               results["data"]["folder"])
    fewer = exp.evaluate_stage(exp.STAGES[2], dataclasses.replace(smoke_settings, figure_images=1),
                               results["data"]["folder"])[1]
    assert len(fewer) == 1 and np.array_equal(fewer[0], labels[0])  # fewer figure images: reused

    # A finished stage written before a TrainConfig field existed is reused when the field is at
    # its default (config.json has no max_train_seconds): nothing retrained.
    config_path = output / "fcn32s" / "config.json"
    record = json.loads(config_path.read_text())
    del record["config"]["max_train_seconds"]
    config_path.write_text(json.dumps(record))
    smoke_again = dataclasses.replace(settings, **exp.SMOKE_SETTINGS)
    summary, trained = exp.run_stage(exp.stage_config(exp.STAGES[0], smoke_again, results["data"]["folder"]))
    assert not trained and summary["status"] == "finished"

    # A finished stage is not silently reused with other settings.
    changed = dataclasses.replace(settings, **exp.SMOKE_SETTINGS)
    changed.epochs = 3
    config = exp.stage_config(exp.STAGES[0], changed, results["data"]["folder"])
    with pytest.raises(ValueError, match="finished run with other settings.*epochs: 1 -> 3"):
        exp.run_stage(config)


def test_results_without_models_are_reused_and_the_at_once_model_added(smoke_run):
    """What the GPU run brings back (no model files, no figure label maps) continues with
    --at_once: the staged models are neither retrained nor re-evaluated, the at-once model is
    trained and evaluated, the results name the reuse, and the earlier figure is kept."""
    output, _ = smoke_run
    saved = output.with_name(output.name + ".saved")
    shutil.copytree(output, saved)  # the fixture's run is shared with other tests: restored below
    try:
        before = json.loads((output / exp.RESULTS_JSON).read_text())
        figure = (output / exp.COMPARISON_PNG).read_bytes()
        for stage in exp.STAGES:  # as gpu_run.sh's archive has them
            for path in (output / stage.name).iterdir():
                if path.name not in ("summary.json", "config.json", "log.csv", "eval"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            (output / stage.name / "eval" / exp.FIGURE_LABELS).unlink()
        settings = exp.ExperimentSettings(data="", output_dir=str(output), verbose=0, at_once=True)
        results = exp.run_experiment(settings, smoke=True, command="continued")
        assert results["complete"] and list(results["models"]) == ["FCN-32s", "FCN-16s", "FCN-8s", "FCN-8s at-once"]
        for title in ("FCN-32s", "FCN-16s", "FCN-8s"):
            entry = results["models"][title]
            assert entry["reused_without_model"] and entry["metrics"] == before["models"][title]["metrics"]
            assert not (output / entry["stage"] / "last.keras").exists()  # not retrained
        at_once = results["models"]["FCN-8s at-once"]
        assert not at_once["reused_without_model"] and (output / "fcn8s_at_once" / "last.keras").is_file()
        assert at_once["training"]["steps"] == 3 * exp.SMOKE_SETTINGS["steps_per_epoch"]
        assert (output / exp.COMPARISON_PNG).read_bytes() == figure
        assert results["figures"]["comparison_models"] == ["FCN-32s", "FCN-16s", "FCN-8s"]
        text = (output / exp.RESULTS_MD).read_text()
        assert "- Reused from an earlier call (their model files were not kept;" in text
        assert "FCN-8s (commit " in text and "FCN-8s at-once (commit" not in text
        assert "The at-once FCN-8s scores" in text
        assert "Models in the comparison: FCN-32s, FCN-16s, FCN-8s." in text

        # A stage with neither its model nor its evaluation is named.
        shutil.rmtree(output / "fcn16s" / "eval")
        with pytest.raises(FileNotFoundError, match="fcn16s: no last.keras to evaluate and no earlier evaluation"):
            exp.run_experiment(settings, smoke=True)
    finally:
        shutil.rmtree(output)
        saved.rename(output)


def test_stage_seconds_gives_every_stage_the_epochs_fcn32s_did(tmp_path, monkeypatch):
    """... and the results are written after every stage (partial until the last), so a call
    ended by a time limit in a later stage still leaves every evaluated row and both figures."""
    voc = make_synthetic_voc(tmp_path / "voc", **exp.SMOKE_DATA)
    settings = exp.ExperimentSettings(data=str(voc), output_dir=str(tmp_path / "out"))
    settings = dataclasses.replace(settings, **{**exp.SMOKE_SETTINGS, "epochs": 3, "stage_seconds": 1e-3},
                                   figure_images=1, verbose=0, controls=True)
    written, real_write = [], exp.write_results

    def write_and_look(results, output_dir):
        paths = real_write(results, output_dir)
        on_disk = json.loads(paths["json"].read_text())
        figures = [Image.open(Path(output_dir) / name).format for name in (exp.COMPARISON_PNG, exp.CURVES_PNG)]
        written.append((on_disk["complete"], list(on_disk["models"]), figures,
                        "**Partial results**" in paths["markdown"].read_text()))
        return paths

    monkeypatch.setattr(exp, "write_results", write_and_look)
    results = exp.run_experiment(settings)
    titles = ["FCN-32s", "FCN-16s", "FCN-8s", "FCN-32s trained as FCN-16s", "FCN-32s trained as FCN-8s"]
    assert written == [(n == 5, titles[:n], ["PNG", "PNG"], n < 5) for n in range(1, 6)]
    # FCN-32s stops after its first epoch (2 steps); the later stages and the controls get that
    # 1 epoch, not 3.
    steps = {title: entry["training"]["steps"] for title, entry in results["models"].items()}
    assert steps == {"FCN-32s": 2, "FCN-16s": 2, "FCN-8s": 2, "FCN-32s trained as FCN-16s": 2, "FCN-32s trained as FCN-8s": 2}
    findings = "\n".join(exp.findings(results["models"]))
    assert "FCN-16s against FCN-32s trained as FCN-16s (same steps and learning rates, no skips)" in findings
    assert "FCN-8s against FCN-32s trained as FCN-8s" in findings
    assert results["budget"] == {"stage_seconds": 1e-3, "epochs_per_stage": 1, "fcn32s_stopped_by_budget": True}
    assert results["settings"]["epochs"] == 3 and results["settings"]["stage_seconds"] == 1e-3
    text = (tmp_path / "out" / exp.RESULTS_MD).read_text()
    assert "Budget: FCN-32s stopped by its time budget of 0.001 s after 1 epoch(s); every later stage trained the same 1" in text


def test_bad_inputs_are_named(tmp_path):
    settings = exp.ExperimentSettings(data=str(tmp_path / "missing"), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--data must be a VOCdevkit root.*missing"):
        exp.run_experiment(settings)
    assert not (tmp_path / "out").exists()  # bad --data leaves no empty output folder behind
    voc = make_synthetic_voc(tmp_path / "VOCdevkit", num_train=1, num_val=1, size=(24, 24))
    with pytest.raises(ValueError, match=r"--data '.*VOCdevkit' has no sbd_train split; it has \['val'\]"):
        exp.run_experiment(dataclasses.replace(settings, data=str(voc), train_split="sbd_train"))
    two_rates = dataclasses.replace(settings, learning_rates=[1e-4, 1e-5])
    with pytest.raises(ValueError, match="--learning_rates needs one rate per stage"):
        exp.run_experiment(two_rates)
    (tmp_path / "afile").write_text("x")
    for output_dir, where in ((tmp_path / "afile", "a file"), (tmp_path / "afile" / "sub", "inside")):
        with pytest.raises(ValueError, match=f"--output_dir must be a folder.*{where}"):
            exp.run_experiment(dataclasses.replace(settings, data=str(voc), output_dir=str(output_dir)))


def test_bad_evaluation_flags_are_named_before_training(tmp_path, monkeypatch):
    def no_training(config):
        raise AssertionError("a stage trained before the evaluation flags were checked")

    monkeypatch.setattr(exp, "train", no_training)
    voc = make_synthetic_voc(tmp_path / "VOCdevkit", num_train=1, num_val=2, size=(24, 24))
    settings = exp.ExperimentSettings(data=str(voc), output_dir=str(tmp_path / "out"), verbose=0)
    with pytest.raises(ValueError, match="--eval_canvas must be N or HxW with positive integers. Received: 'abc'"):
        exp.run_experiment(dataclasses.replace(settings, eval_canvas="abc"))
    with pytest.raises(ValueError, match=r"--figure_images must not exceed --eval_max_images.*--figure_images=2, "
                                         r"--eval_max_images=1"):
        exp.run_experiment(dataclasses.replace(settings, figure_images=2, eval_max_images=1))
    with pytest.raises(ValueError, match=r"--eval_canvas must hold every evaluated image: 2 images of the 'val' "
                                         r"split are larger than 16x16.*Received: --eval_canvas=16"):
        exp.run_experiment(dataclasses.replace(settings, eval_canvas="16"))


def test_the_paper_reference_is_table_2_of_the_cvpr_paper():
    """The numbers the results are compared with, as printed in Long et al. (CVPR 2015), Table 2
    (a mistyped one would pass unnoticed: only FCN-32s's row appeared in a rendered report)."""
    assert exp.PAPER_TABLE2 == {
        "FCN-32s": {"pixel_accuracy": 89.1, "mean_accuracy": 73.3, "mean_iu": 59.4, "fw_iu": 81.4},
        "FCN-16s": {"pixel_accuracy": 90.0, "mean_accuracy": 75.7, "mean_iu": 62.4, "fw_iu": 83.0},
        "FCN-8s": {"pixel_accuracy": 90.3, "mean_accuracy": 75.9, "mean_iu": 62.7, "fw_iu": 83.2},
    }
