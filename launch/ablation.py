"""Runs a config's sweep (variants x seeds) on one machine, resumably, into one CSV and one PNG.

python -m launch.ablation --config=configs/ablation_fashion_mnist.py --output=DIR \
  [--seeds=0,1,2] [--variants=bnn,paper] [--collect_only] [--config.KEY=VALUE ...]

The config file must define `sweep()` -> [(variant name, {dotted key: value}), ...] (the format
launch/sweep.py reads). Every run
trains in its own workdir DIR/<variant>/seed_<seed>, one after the other in this process.
Resuming is per run: a run whose result.json exists is skipped (after checking that it was
trained with the same config), an interrupted run resumes from its last checkpoint
(train.train_and_evaluate does that), the rest start fresh. At the end DIR holds:

  ablation.csv   one row per run: test accuracy and loss, steps, wall time, the final scales
                 (alpha/<layer>, beta/<layer>: means over channels, read from the final
                 checkpoint) and the first and last logged mean of alpha and beta over layers
                 (read back from the run's metrics.jsonl)
  ablation.png   test accuracy per variant (every seed and mean +- std) and mean alpha over
                 training for the variants that train alpha
  summary.md     the table for the README: mean +- std over seeds per variant
"""

import csv
import json
import math
import pathlib
import time

from absl import flags, logging

from bnn_jax.errors import InputError
from bnn_jax.logs import quiet_library_logs
from launch.sweep import apply, load_sweep, select

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (modules share absl's flags)."""
  from bnn_jax import cli

  cli.define_config_flag("A config file that defines get_config() and sweep().")
  flags.DEFINE_string("output", None, "Folder of the runs, the CSV and the plot; rerun to resume.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run every variant with.")
  flags.DEFINE_list("variants", [], "Names of the variants to run (default: all of sweep()).")
  flags.DEFINE_bool(
    "collect_only", False, "Train nothing: rebuild CSV, plot and summary from finished runs."
  )
  flags.mark_flags_as_required(["config", "output"])


RESULT_FILE = "result.json"
CSV_FILE = "ablation.csv"
PLOT_FILE = "ablation.png"
SUMMARY_FILE = "summary.md"
_LEADING_COLUMNS = (
  "variant",
  "seed",
  "status",
  "test_accuracy",
  "test_loss",
  "test_count",
  "epochs",
  "steps",
  "wall_s",
  "resumed_from_step",
  "alpha_mean_first_logged",
  "alpha_mean_final",
  "alpha_min_final",
  "alpha_nonpositive_fraction",
  "beta_mean_first_logged",
  "beta_mean_final",
)


# ----------------------------------------------------------------------------- configs


def variant_config(base, overrides: dict, seed: int):
  """A copy of `base` with the dotted-key `overrides` and `seed` applied."""
  return apply(base, {**overrides, "seed": seed})


def run_dir(output, variant: str, seed: int) -> pathlib.Path:
  return pathlib.Path(output) / variant / f"seed_{seed}"


# ----------------------------------------------------------------------------- what a run left


def logged_scalars(
  workdir: pathlib.Path, prefixes=("train_mean/alpha/", "train_mean/beta/")
) -> dict:
  """{tag: [(step, value), ...] sorted by step} of the run's metrics.jsonl scalars."""
  from bnn_jax import run

  series: dict[str, dict[int, float]] = {}
  for row in run.MetricsLog(workdir).read():
    for tag, value in row.items():
      if tag.startswith(prefixes):
        series.setdefault(tag, {})[int(row["step"])] = float(value)
  return {tag: sorted(points.items()) for tag, points in series.items()}


def mean_over_layers(series: dict, kind: str) -> list[tuple[int, float]]:
  """[(step, mean over layers of train_mean/<kind>/<layer>), ...] at steps every layer logged."""
  tags = [t for t in series if t.startswith(f"train_mean/{kind}/")]
  if not tags:
    return []
  by_step = [dict(series[t]) for t in tags]
  steps = sorted(set.intersection(*(set(s) for s in by_step)))
  return [(step, sum(s[step] for s in by_step) / len(by_step)) for step in steps]


def final_scales(workdir: pathlib.Path) -> dict:
  """Scale statistics of the run's final checkpoint: per-layer means, min and sign of alpha.

  The scales are selected by type, as layers.mean_scales does for the logged values.
  """
  import numpy as np

  from bnn_jax import layers, run

  params = run.restore_state(workdir)[3]["params"]
  out = {k: float(v) for k, v in layers.mean_scales(params).items()}
  alphas = [np.ravel(np.asarray(a)) for a in layers.values_of_type(params, layers.WeightScale)]
  if alphas:
    alpha = np.concatenate(alphas)
    out["alpha_min_final"] = float(alpha.min())
    out["alpha_nonpositive_fraction"] = float(np.mean(alpha <= 0))
  return out


def _checkpoint_step(workdir: pathlib.Path) -> int:
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
  return max(steps, default=0)


# ----------------------------------------------------------------------------- running


def run_one(config, workdir: pathlib.Path, variant: str) -> dict:
  """Trains one run (or resumes it, or skips it when finished); returns its result record."""
  from bnn_jax import progress, run, train

  result_file = workdir / RESULT_FILE
  if result_file.exists():
    record = json.loads(result_file.read_text())
    differ = run.config_differences(config, record["config"])
    if differ:
      raise InputError(
        f"{workdir} holds a finished run of another config ({differ[0]}); use another --output"
      )
    return record

  resumed_from = _checkpoint_step(workdir)
  start = time.time()
  try:
    result, status = train.train_and_evaluate(config, str(workdir)), "done"
  except progress.NonFiniteLossError as e:  # a diverging variant is a result, not a crash
    logging.error("%s", e)
    result, status = {"accuracy": math.nan, "loss": math.nan, "count": 0}, "diverged"
  wall = time.time() - start

  series = logged_scalars(workdir)
  alpha, beta = mean_over_layers(series, "alpha"), mean_over_layers(series, "beta")
  scales = final_scales(workdir) if status == "done" else {}
  layer_means = {k: v for k, v in scales.items() if k.startswith(("alpha/", "beta/"))}
  final_alpha = [v for k, v in layer_means.items() if k.startswith("alpha/")]
  final_beta = [v for k, v in layer_means.items() if k.startswith("beta/")]
  record = {
    "variant": variant,
    "seed": config.seed,
    "status": status,
    "test_accuracy": result["accuracy"],
    "test_loss": result["loss"],
    "test_count": result["count"],
    "epochs": config.num_epochs,
    "steps": _checkpoint_step(workdir),
    "wall_s": round(wall, 1),
    "resumed_from_step": resumed_from,
    "alpha_mean_first_logged": alpha[0][1] if alpha else None,
    "alpha_mean_final": sum(final_alpha) / len(final_alpha) if final_alpha else None,
    "alpha_min_final": scales.get("alpha_min_final"),
    "alpha_nonpositive_fraction": scales.get("alpha_nonpositive_fraction"),
    "beta_mean_first_logged": beta[0][1] if beta else None,
    "beta_mean_final": sum(final_beta) / len(final_beta) if final_beta else None,
    **layer_means,
    "alpha_mean_logged": alpha,
    "config": run.flatten_config(config),
  }
  tmp = result_file.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=1))
  tmp.replace(result_file)  # atomic: a run counts as finished only once this file is whole
  return record


def run_sweep(base, variants, seeds, output, train_missing: bool = True) -> list[dict]:
  """Runs (or collects) every variant x seed; writes the CSV, plot and summary; returns rows."""
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  records, total = [], len(variants) * len(seeds)
  for name, overrides in variants:
    for seed in seeds:
      config = variant_config(base, overrides, seed)
      workdir = run_dir(output, name, seed)
      if train_missing:
        record = run_one(config, workdir, name)
      elif (workdir / RESULT_FILE).exists():  # collect only: what is there, unchecked
        record = json.loads((workdir / RESULT_FILE).read_text())
      else:
        continue
      records.append(record)
      print(
        f"[{len(records)}/{total}] {name} seed {seed}: test accuracy "
        f"{record['test_accuracy']:.4f}, {record['wall_s']:.0f} s ({record['status']})",
        flush=True,
      )
  write_csv(records, output / CSV_FILE)
  summary = summarize(records)
  (output / SUMMARY_FILE).write_text(summary)
  plot(records, output / PLOT_FILE)
  print(summary, flush=True)
  return records


# ----------------------------------------------------------------------------- outputs


def write_csv(records: list[dict], path: pathlib.Path) -> None:
  """One row per run; the per-layer scale columns are the union over runs, sorted."""
  layer_columns = sorted({k for r in records for k in r if k.startswith(("alpha/", "beta/"))})
  columns = [*_LEADING_COLUMNS, *layer_columns]
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in records:
      writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})


def _mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
  return mean, math.sqrt(var)


def _by_variant(records: list[dict]) -> dict[str, list[dict]]:
  groups: dict[str, list[dict]] = {}
  for r in records:
    groups.setdefault(r["variant"], []).append(r)
  return groups


def summarize(records: list[dict]) -> str:
  """A markdown table: per variant, test accuracy mean +- std over seeds and the scales."""
  lines = [
    "| variant | test accuracy (%), mean ± std | seeds | epochs | wall time per run (s) "
    "| mean alpha: first logged -> final | mean beta: first logged -> final |",
    "|---|---|---|---|---|---|---|",
  ]

  def arrow(rows, kind):
    first = [r[f"{kind}_mean_first_logged"] for r in rows]
    last = [r[f"{kind}_mean_final"] for r in rows]
    if any(v is None for v in first + last):
      return "-"
    return f"{_mean_std(first)[0]:.3f} -> {_mean_std(last)[0]:.3f}"

  for name, rows in _by_variant(records).items():
    accs = [100 * r["test_accuracy"] for r in rows if r["status"] == "done"]
    acc = "diverged" if not accs else "{:.2f} ± {:.2f}".format(*_mean_std(accs))
    wall = _mean_std([r["wall_s"] for r in rows])[0]
    lines.append(
      f"| {name} | {acc} | {len(rows)} | {rows[0]['epochs']:g} | {wall:.0f} "
      f"| {arrow(rows, 'alpha')} | {arrow(rows, 'beta')} |"
    )
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  """Left: test accuracy per variant, every seed and mean +- std. Right: mean alpha vs step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = _by_variant(records)
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(3, 2))
  for i, rows in enumerate(groups.values()):
    accs = [100 * r["test_accuracy"] for r in rows if r["status"] == "done"]
    if not accs:
      continue
    offsets = [0.12 * (j - (len(accs) - 1) / 2) for j in range(len(accs))]
    left.scatter([i + o for o in offsets], accs, s=14, color="tab:blue", alpha=0.6, zorder=2)
    mean, std = _mean_std(accs)
    left.errorbar(i, mean, yerr=std, fmt="_", color="black", markersize=18, capsize=4, zorder=3)
  left.set_xticks(range(len(groups)), list(groups), rotation=35, ha="right")
  left.set_ylabel("test accuracy (%)")
  left.set_title("test accuracy per variant (dots: seeds; bar: mean ± std)")
  left.grid(axis="y", alpha=0.3)

  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  drawn = 0
  for name, rows in groups.items():
    curves = [r["alpha_mean_logged"] for r in rows if r.get("alpha_mean_logged")]
    if not curves:
      continue
    color = colors[drawn % len(colors)]
    for k, curve in enumerate(curves):
      steps, values = zip(*curve)
      right.plot(steps, values, color=color, alpha=0.7, label=name if k == 0 else None)
    drawn += 1
  right.axhline(0.0, color="grey", linewidth=0.8)
  right.set_xlabel("training step")
  right.set_ylabel("alpha, mean over channels and layers")
  right.set_title("trainable weight scales during training")
  if drawn:
    right.legend(fontsize=8)
  right.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- command line


def main(argv, config):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r}; settings are flags")
  quiet_library_logs()
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise InputError(f"--seeds={','.join(FLAGS.seeds)} must be integers, e.g. 0,1,2") from None
  variants = select(load_sweep(FLAGS.config), FLAGS.variants)
  if FLAGS.collect_only and not any(
    (run_dir(FLAGS.output, name, seed) / RESULT_FILE).exists()
    for name, _ in variants
    for seed in seeds
  ):
    raise InputError(
      f"--output {FLAGS.output} holds no finished runs of these variants and seeds; "
      f"--collect_only only reads finished runs (drop it to train them)"
    )
  run_sweep(config, variants, seeds, FLAGS.output, train_missing=not FLAGS.collect_only)


if __name__ == "__main__":
  from bnn_jax import cli

  define_flags()
  cli.run(main, with_config=True)
