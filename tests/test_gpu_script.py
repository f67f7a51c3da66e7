"""launch/gpu_run.sh end to end on CPU (tiny runs), and its parts: launch/multi_run.py (run list,
result rows) and launch/decode_jpeg_npz.py."""

import csv
import functools
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from launch import decode_jpeg_npz, multi_run, run_list

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLORS = np.array([[40, 40, 200], [200, 40, 40], [40, 200, 40], [200, 200, 40]])


def write_jpeg_npz(path: pathlib.Path, count: int, seed: int) -> list[np.ndarray]:
  """A JPEG npz of `count` 8x8 images, one color per class (4 classes); returns the pixels."""
  rng = np.random.default_rng(seed)
  labels = np.arange(count) % 4
  blobs = []
  for label in labels:
    image = np.clip(COLORS[label] + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    blobs.append(buffer.getvalue())
  offsets = np.cumsum([0] + [len(b) for b in blobs])
  jpeg = np.frombuffer(b"".join(blobs), np.uint8)
  np.savez(path, jpeg=jpeg, offsets=offsets, labels=labels)
  return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]


def jpeg_pair(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir(parents=True)
  write_jpeg_npz(folder / "train.npz", 64, seed=0)
  write_jpeg_npz(folder / "test.npz", 40, seed=1)
  return folder


# ----------------------------------------------------------------------------- decoding


def test_decode_gives_pillows_pixels_and_refuses_bad_offsets(tmp_path):
  tmp_path.joinpath("in").mkdir()
  pixels = write_jpeg_npz(tmp_path / "in" / "train.npz", 10, seed=0)
  write_jpeg_npz(tmp_path / "in" / "test.npz", 6, seed=1)
  assert decode_jpeg_npz.main([str(tmp_path / "in"), str(tmp_path / "out"), "--workers=2"]) == 0
  with np.load(tmp_path / "out" / "train.npz") as z:
    assert z["images"].dtype == np.uint8 and z["images"].shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(z["images"], np.stack(pixels))
    np.testing.assert_array_equal(z["labels"], np.arange(10) % 4)
  with np.load(tmp_path / "out" / "test.npz") as z:
    assert z["images"].shape == (6, 8, 8, 3)

  with np.load(tmp_path / "in" / "test.npz") as z:
    np.savez(
      tmp_path / "in" / "test.npz", jpeg=z["jpeg"], offsets=z["offsets"][:-1], labels=z["labels"]
    )
  with pytest.raises(ValueError, match=r"offsets must rise from 0 to len\(jpeg\)"):
    decode_jpeg_npz.read_jpeg_npz(tmp_path / "in" / "test.npz")


# ----------------------------------------------------------------------------- run lists


def test_run_list_expands_seeds_and_names_bad_lines(tmp_path):
  runs_file = tmp_path / "runs.csv"
  runs_file.write_text(
    "# a comment\n"
    "name,config,overrides,seeds,epochs\n"
    "\n"
    "a,configs/test.py,model.width=0.125 optimizer.learning_rate=0.01,0 1,2\n"
    "b,configs/test.py,,,\n"
  )
  runs = multi_run.read_runs(runs_file)
  assert [(r.name, r.seed, r.epochs) for r in runs] == [
    ("a", 0, 2.0),
    ("a", 1, 2.0),
    ("b", 0, None),
  ]
  assert runs[0].overrides == ("model.width=0.125", "optimizer.learning_rate=0.01")
  command = runs[1].command(tmp_path, ["--config.steps_per_call=10", "--config.model.width=1.0"])
  assert command[3:] == [
    "--config=configs/test.py",
    f"--workdir={tmp_path / 'a' / 'seed_1'}",
    "--config.seed=1",
    "--config.num_epochs=2.0",
    "--config.steps_per_call=10",
    "--config.model.width=1.0",
    "--config.model.width=0.125",  # the run's own overrides come last and win
    "--config.optimizer.learning_rate=0.01",
  ]
  for line, message in [
    ("c,configs/test.py,model.width,0,1", "override 'model.width' must be KEY=VALUE"),
    ("c,configs/test.py,,zero,1", "seeds must be integers"),
    ("c,configs/test.py,,0,-1", "epochs = -1.0 must be a number > 0"),
    ("c d,configs/test.py,,0,1", "name 'c d' may hold letters"),
    ("a,configs/test.py,,1,1", r"repeats \(name, seed\) \('a', '1'\)"),
  ]:
    runs_file.write_text(f"name,config,overrides,seeds,epochs\na,configs/test.py,,0 1,1\n{line}\n")
    with pytest.raises(multi_run.RunListError, match=message):
      multi_run.read_runs(runs_file)


def test_default_gpu_run_list_fits_one_call_and_names_real_config_keys():
  """launch/gpu_runs.csv: its estimates add up to one call (525 s with gpu_run.sh's setup), its
  chains fit the runs' time, the comparisons share the control's epochs, and every config file
  and override key exists (data.cutout comes with the augmentation switches' branch)."""
  from bnn_jax import cli

  text = (ROOT / "launch" / "gpu_runs.csv").read_text()
  runs = multi_run.read_runs(ROOT / "launch" / "gpu_runs.csv")
  script = (ROOT / "launch" / "gpu_run.sh").read_text()
  parallel = int(re.search(r"PARALLEL=\$\{PARALLEL:-(\d+)\}", script).group(1))
  assert all(r.estimate_s is not None for r in runs)
  total = sum(r.estimate_s for r in runs)
  assert f"= {total:.0f} s of runs" in text  # the comment's arithmetic is the column's
  assert total + 15 <= 525  # 15 s: gpu_run.sh's setup before the runs
  for run in runs:  # each run of a chain gets 1/parallel of the GPU
    chain = run_list.chain_of(run, runs)
    assert parallel * sum(r.estimate_s for r in chain) <= 540 - 15 - 15, [r.name for r in chain]
  control = next(r for r in runs if r.name.startswith("control"))
  init_sources = {name for r in runs for key, (name, _) in r.sources if key == "init.from_workdir"}
  assert {r.name for r in runs if r.epochs != control.epochs} <= init_sources  # stage 1 only
  assert any(r.sources for r in runs) and all(r.seed == 0 for r in runs)

  problems = []
  for run in runs:
    config = cli.load_config(str(ROOT / run.config))  # FILE:ARG too
    keys = set(cli.config_keys(config))
    for key, _ in run.sources:
      assert key in keys
    for override in run.overrides:
      key, value = override.split("=", 1)
      if key not in keys:
        problems.append(f"{run.name}: {key} is no config key")
      elif str(functools.reduce(getattr, key.split("."), config)) == value:
        problems.append(f"{run.name}: {key}={value} changes nothing")
  assert not problems


def test_result_row_reads_the_runs_metrics(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  records = [
    {"step": 4, "train/images_per_sec": 10.0},
    {"step": 4, "eval/accuracy": 0.5, "eval/loss": 1.2, "eval/count": 40, "epoch": 1.0},
    {"step": 8, "train/images_per_sec": 30.0},
    {"step": 8, "eval/accuracy": 0.75, "eval/loss": 0.9, "eval/count": 40, "epoch": 2.0},
    {"step": 12, "train/images_per_sec": 20.0},
    {"step": 12, "eval/accuracy": 0.625, "eval/loss": 1.0, "eval/count": 40, "epoch": 3.0},
  ]
  text = "".join(json.dumps(r) + "\n" for r in records)
  (workdir / "metrics.jsonl").write_text(text + '{"step": 13, "train/lo')  # a cut last line
  (workdir / "config.json").write_text(json.dumps({"data.name": "npz", "data.path": "/d/cifar"}))
  run = multi_run.Run("a", "configs/test.py", ("model.width=0.125",), 3, 3.0)
  row = multi_run.result_row(run, workdir, "done", 12.34, "1 x cpu")
  assert row == {
    "name": "a",
    "config": "configs/test.py",
    "overrides": "model.width=0.125",
    "seed": 3,
    "status": "done",
    "test_accuracy": 0.625,
    "best_test_accuracy": 0.75,
    "epochs": 3.0,
    "steps": 12,
    "wall_s": 12.3,
    "images_per_sec": 20.0,
    "device": "1 x cpu",
    "data": "npz:cifar",
    "sources": "",
    "reason": "",
  }
  assert [e["epoch"] for e in multi_run.evaluations(multi_run.read_metrics(workdir))] == [1, 2, 3]


# ----------------------------------------------------------------------------- the GPU script


def gpu_run(tmp_path, runs: str, out: str, budget_s: int, header=None, **more_env):
  """Runs launch/gpu_run.sh on CPU with tiny runs; returns (process, log text)."""
  (tmp_path / "runs.csv").write_text((header or "name,config,overrides,seeds,epochs") + "\n" + runs)
  env = dict(
    os.environ,
    PYTHON=sys.executable,
    OUT=str(tmp_path / out),
    WORK=str(tmp_path / "work"),
    DATA_JPEG=str(tmp_path / "jpeg"),
    DATA=str(tmp_path / "decoded"),
    SKIP_CSV=str(tmp_path / "committed.csv"),
    BUDGET_S=str(budget_s),
    MIN_START_S="5",
    PARALLEL="2",
    RUN_FLAGS="--config.steps_per_call=10 --config.eval_every_epochs=1",
    JAX_PLATFORMS="cpu",
    **more_env,
  )
  out_process = subprocess.run(
    ["bash", str(ROOT / "launch" / "gpu_run.sh"), str(tmp_path / "runs.csv")],
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,  # only against a hang: a run the budget failed to stop would take hours
  )
  return out_process, out_process.stdout + out_process.stderr


def csv_rows(path: pathlib.Path) -> list[dict]:
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_gpu_script_runs_two_at_once_skips_finished_runs_and_stops_in_its_budget(tmp_path):
  jpeg_pair(tmp_path / "jpeg")
  tiny = "run_a,configs/test.py,,0,2\nrun_b,configs/test.py,model.width=0.125,0,2\n"
  imagenet = dict(  # the ImageNet step benchmark, shrunk: AlexNet at width 1/16, batch 2, 1 step
    IMAGENET_BENCH="1",
    IMAGENET_CONFIGS="alexnet_imagenet",
    IMAGENET_BATCH="2",
    IMAGENET_FLAGS="--config.model.width=0.0625 --steps=1 --repeats=1",
  )
  # The largest budget (540 s, the most a device call allows): both runs finish in it even on a
  # loaded machine (about 2 min on an idle one).
  first, log = gpu_run(tmp_path, tiny, "out1", budget_s=540, **imagenet)
  assert first.returncode == 0, log[-3000:]
  steps = (tmp_path / "out1" / "imagenet_steps.txt").read_text()
  assert "model alexnet width 0.0625, batch 2, images 224x224x3 of 1000 classes" in steps
  assert "compute bfloat16" in steps
  for variant in ("binary", "float"):
    assert re.search(
      rf"{variant}: +[\d.]+ images/s \(median\); an epoch of 1281167 images: ", steps
    )
  with np.load(tmp_path / "decoded" / "train.npz") as z:
    assert z["images"].shape == (64, 8, 8, 3)
  rows = csv_rows(tmp_path / "out1" / "gpu_runs.csv")
  assert sorted((r["name"], r["seed"], r["status"]) for r in rows) == [
    ("run_a", "0", "done"),
    ("run_b", "0", "done"),
  ]
  for r in rows:
    assert r["steps"] == "8" and r["epochs"] == "2.0"
    # The accuracies are the trainer's own evaluations (steps 4 and 8), copied exactly.
    metrics = tmp_path / "work" / "runs" / r["name"] / "seed_0" / "metrics.jsonl"
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = {m["step"]: m["eval/accuracy"] for m in logged if "eval/accuracy" in m}
    assert sorted(evals) == [4, 8] and all(0 <= a <= 1 for a in evals.values())
    assert float(r["test_accuracy"]) == evals[8]
    assert float(r["best_test_accuracy"]) == max(evals.values())
    assert r["device"] == "1 x cpu" and r["data"] == "npz:decoded" and float(r["wall_s"]) > 0
  # Two at once: both started before either finished.
  assert log.index("start run_b") < log.index("done run_")
  epochs = csv_rows(tmp_path / "out1" / "gpu_epochs.csv")
  assert sorted((e["name"], e["epoch"]) for e in epochs) == [
    ("run_a", "1.0"),
    ("run_a", "2.0"),
    ("run_b", "1.0"),
    ("run_b", "2.0"),
  ]
  per_run = csv_rows(tmp_path / "work" / "runs" / "run_a" / "seed_0" / "test_accuracy.csv")
  assert [p["step"] for p in per_run] == ["4", "8"]

  # Second call: run_a's row is committed, run_b finished in the work folder, a long run does
  # not fit in the budget. 90 s: what is left after the script's start (15 s kept to stop) must
  # exceed MIN_START_S for the long run to start, however slow the start; the budget then stops
  # it (a line says so). How many seconds stopping takes is not asserted: no wall-clock checks.
  with (tmp_path / "committed.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=multi_run.RESULT_COLUMNS)
    writer.writeheader()
    writer.writerow(next(r for r in rows if r["name"] == "run_a"))
  metrics_a = tmp_path / "work" / "runs" / "run_a" / "seed_0" / "metrics.jsonl"
  before = metrics_a.stat().st_mtime_ns
  long_run = "long,configs/test.py,,0,100000\n"
  second, log = gpu_run(tmp_path, tiny + long_run, "out2", budget_s=90)
  assert second.returncode == 0, log[-3000:]
  assert "skip run_a seed 0: in" in log and "skip run_b seed 0: finished in" in log
  assert "stopped long seed 0 (time budget)" in log
  assert metrics_a.stat().st_mtime_ns == before
  rows = csv_rows(tmp_path / "out2" / "gpu_runs.csv")
  assert [r["name"] for r in rows] == ["run_b"]  # not the committed run_a, not the stopped long


def test_gpu_script_help_prints_the_usage_and_starts_nothing(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"))
  script = str(ROOT / "launch" / "gpu_run.sh")
  for flag in ("--help", "-h"):
    out = subprocess.run(["bash", script, flag], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("One GPU, one call:") and "PROFILE (0)" in out.stdout
    assert "launch/gpu_run.sh --help" in out.stdout and "#" not in out.stdout.split("\n", 1)[0]
  assert list(tmp_path.iterdir()) == []  # no gpu_out, no gpu_work
  out = subprocess.run(["bash", script, "--halp"], env=env, capture_output=True, text=True)
  assert out.returncode == 2 and "unknown option --halp" in out.stderr
  assert list(tmp_path.iterdir()) == []


def test_gpu_script_refuses_a_bad_run_list_before_installing_or_decoding(tmp_path):
  jpeg_pair(tmp_path / "jpeg")
  header = ",".join(run_list.COLUMNS)
  first, log = gpu_run(tmp_path, "a,configs/test.py,,0,1,,a\n", "out", 100, header=header)
  assert first.returncode == 2, log[-3000:]
  assert "run 1 (a): its init_from is the run itself" in log
  assert not (tmp_path / "decoded").exists()


@pytest.mark.slow
def test_gpu_script_profile_writes_the_step_tables(tmp_path):
  from tests.test_profile_step import check_profile

  jpeg_pair(tmp_path / "jpeg")
  shrink = "--config.model.width=0.0625 --batch_size=2 --steps=2 --warmup=1"
  done, log = gpu_run(tmp_path, "", "out", budget_s=500, PROFILE="1", PROFILE_FLAGS=shrink)
  assert done.returncode == 0, log[-3000:]
  for variant in ("binary", "float"):
    check_profile(tmp_path / "out" / f"profile_{variant}.txt", variant, batch=2, steps=2)
    assert f"({variant}), model vgg_small width 0.0625" in log  # its head in gpu_run.log
  assert "0 runs in the list" in log
