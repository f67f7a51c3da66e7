"""launch/multi_run.py's chains: a run that names another run of the list as its teacher or its
stage-1 source (launch/run_list.py) starts after it, with its workdir; it is skipped, with the
reason, where the source cannot finish; bad chains are refused before anything starts."""

import csv
import json
import pathlib
import sys

import pytest

from launch import multi_run, run_list

HEADER = "name,config,overrides,seeds,epochs,teacher,init_from,estimate_s\n"


def launch(tmp_path, runs: str, *flags: str) -> int:
  (tmp_path / "runs.csv").write_text(HEADER + runs)
  argv = [f"--runs={tmp_path / 'runs.csv'}", f"--root={tmp_path / 'root'}", "--device=1 x cpu"]
  return multi_run.main(argv + ["--poll_s=0.05", *flags])


def results(tmp_path) -> dict[str, dict]:
  with (tmp_path / "root" / "results.csv").open(newline="") as f:
    return {r["name"]: r for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------- the list


def test_sources_take_the_same_seed_or_the_only_one_and_fill_the_config_keys(tmp_path):
  path = tmp_path / "runs.csv"
  path.write_text(
    HEADER + "t,configs/test.py,,0 1,1\n"
    "one,configs/test.py,,5,1\n"
    "s,configs/test.py,,0 1,1,t,one,12.5\n"
    "old,configs/test.py,,0,1\n"  # rows may stop after the fifth column
  )
  runs = {r.key: r for r in run_list.read_runs(path)}
  student = runs[("s", "1")]
  assert student.sources == (
    ("distill.teacher_workdir", ("t", 1)),  # the teacher's run of the same seed
    ("init.from_workdir", ("one", 5)),  # the source's only seed
  )
  assert student.estimate_s == 12.5 and runs[("old", "0")].sources == ()
  command = student.command(tmp_path, ["--config.log_every_steps=1"])
  assert command[7:] == [
    f"--config.distill.teacher_workdir={tmp_path / 't' / 'seed_1'}",
    f"--config.init.from_workdir={tmp_path / 'one' / 'seed_5'}",
    "--config.log_every_steps=1",
  ]
  assert student.describe_sources() == "teacher=t/seed_1 init_from=one/seed_5"


@pytest.mark.parametrize(
  "rows, message",
  [  # the row numbers count the list's first line, "ok", as run 1
    ("a,configs/test.py,,0,1,zz\n", "run 2 (a): its teacher 'zz' is not a run of the list"),
    ("a,configs/test.py,,0,1,,a\n", "run 2 (a): its init_from is the run itself"),
    (
      "a,configs/test.py,,0,1,c\nb,configs/test.py,,0,1,a\nc,configs/test.py,,0,1,,b\n",
      "run 2 (a): its sources form a cycle (a -> c -> b -> a)",
    ),
    (
      "t,configs/test.py,,0 1,1\ns,configs/test.py,,2,1,t\n",
      "run 3 (s): its teacher 't' has seeds 0 1 but not seed 2",
    ),
    (
      "t,configs/test.py,,0,1\ns,configs/test.py,distill.teacher_workdir=/x,0,1,t\n",
      "run 3 (s): both the teacher column and the override distill.teacher_workdir",
    ),
    ("a,configs/test.py,,0,1,,,soon\n", "run 2 (a): seeds must be integers, epochs and estimate_s"),
    ("a,configs/test.py,,0,1,,,-3\n", "run 2 (a): estimate_s = -3.0 must be a number >= 0"),
  ],
)
def test_bad_chains_are_refused_before_anything_starts(tmp_path, capsys, rows, message):
  assert launch(tmp_path, "ok,configs/test.py,,0,1\n" + rows) == 2
  error = capsys.readouterr().err
  assert f"runs.csv, {message}" in error
  assert len(error.strip().splitlines()) == 1, error
  assert not (tmp_path / "root").exists()  # nothing started, nothing written


def test_an_unknown_column_is_refused(tmp_path, capsys):
  (tmp_path / "runs.csv").write_text("name,config,teachers\na,configs/test.py,b\n")
  argv = [f"--runs={tmp_path / 'runs.csv'}", f"--root={tmp_path / 'root'}"]
  assert multi_run.main(argv) == 2
  assert "unknown column 'teachers'" in capsys.readouterr().err


def test_estimates_add_up_and_name_the_longest_chain(tmp_path):
  (tmp_path / "runs.csv").write_text(
    HEADER + "t,configs/test.py,,0,1,,,100\ns,configs/test.py,,0,1,t,,50\nx,configs/test.py,,0,1\n"
  )
  line = run_list.describe_estimate(run_list.read_runs(tmp_path / "runs.csv"), parallel=3)
  assert line == (
    "estimate for the 3 runs to go: 150 s (the sum of their estimate_s; 1 have none); the "
    "longest chain t -> s: 150 s of estimates, about 450 s of wall time with 3 at once"
  )


# ----------------------------------------------------------------------------- fake runs


@pytest.fixture
def fake_runs(monkeypatch):
  """Runs that are a short Python process each instead of bnn_jax.main: the run's overrides
  say what it does (exit=N; diverge=1: print the trainer's divergence line and exit 2;
  forever=1: never end); each writes its real command line to its workdir as command.json."""
  real_command = run_list.Run.command

  def command(self, root, extra):
    opts = dict(o.split("=", 1) for o in self.overrides)
    argv_file, argv = self.workdir(root) / "command.json", real_command(self, root, extra)
    code = (
      "import json, pathlib, sys, time\n"
      f"pathlib.Path({str(argv_file)!r}).write_text({json.dumps(argv)!r})\n"
      f"if {opts.get('diverge') == '1'}: print('stop: the training loss became nan'); sys.exit(2)\n"
      f"while {opts.get('forever') == '1'}: time.sleep(0.05)\n"
      f"sys.exit({int(opts.get('exit', 0))})\n"
    )
    return [sys.executable, "-c", code]

  monkeypatch.setattr(run_list.Run, "command", command)


def log_order(output: str, *lines: str) -> list[int]:
  return [output.index(line) for line in lines]


def test_dependents_wait_while_independent_runs_fill_the_places(tmp_path, capsys, fake_runs):
  runs = (
    "t,configs/test.py,,0,1\n"
    "s,configs/test.py,,0 1,1,t\n"  # both seeds read t's only seed
    "x,configs/test.py,,0,1\n"
    "y,configs/test.py,,0,1\n"
  )
  assert launch(tmp_path, runs, "--parallel=2") == 0
  out = capsys.readouterr().out
  # t and x take the two places at once (s waits for t); s starts only after t is done.
  start_t, start_x, done_t, start_s = log_order(
    out, "start t seed 0", "start x seed 0", "done t seed 0", "start s seed 0"
  )
  assert start_t < start_x < done_t < start_s
  teacher = tmp_path / "root" / "t" / "seed_0"
  for seed in (0, 1):
    argv = json.loads((tmp_path / "root" / "s" / f"seed_{seed}" / "command.json").read_text())
    assert f"--config.distill.teacher_workdir={teacher}" in argv
  rows = results(tmp_path)
  assert {n: r["status"] for n, r in rows.items()} == dict.fromkeys("tsxy", "done")
  assert rows["s"]["sources"] == "teacher=t/seed_0" and rows["t"]["sources"] == ""


def test_a_source_that_fails_or_diverges_skips_its_dependents_with_the_reason(
  tmp_path, capsys, fake_runs
):
  runs = (
    "bad,configs/test.py,exit=1,0,1\n"
    "kid,configs/test.py,,0,1,bad\n"
    "grandkid,configs/test.py,,0,1,,kid\n"  # skipped in turn
    "nan,configs/test.py,diverge=1,0,1\n"
    "stage2,configs/test.py,,0,1,,nan\n"
    "free,configs/test.py,,0,1\n"
  )
  assert launch(tmp_path, runs, "--parallel=3") == 1  # a run failed
  out = capsys.readouterr().out
  assert "skipped kid seed 0: its teacher bad seed 0 failed" in out
  assert "skipped grandkid seed 0: its init_from kid seed 0 was skipped" in out
  assert "skipped stage2 seed 0: its init_from nan seed 0 diverged" in out
  assert "6 runs in the list: 1 failed, 3 skipped, 0 unfinished" in out
  rows = results(tmp_path)
  assert {n: r["status"] for n, r in rows.items()} == {
    "kid": "skipped",
    "grandkid": "skipped",
    "nan": "diverged",
    "stage2": "skipped",
    "free": "done",  # the independent run finishes
  }
  assert rows["stage2"]["reason"] == "its init_from nan seed 0 diverged"
  assert rows["stage2"]["sources"] == "init_from=nan/seed_0"
  for name in ("kid", "grandkid", "stage2"):
    assert not (tmp_path / "root" / name).exists()  # never started


def test_a_source_stopped_by_the_budget_skips_its_dependents(tmp_path, capsys, fake_runs):
  runs = "slow,configs/test.py,forever=1,0,1\nkid,configs/test.py,,0,1,slow\n"
  assert launch(tmp_path, runs, "--budget_s=2", "--min_start_s=0") == 0
  out = capsys.readouterr().out
  assert "stopped slow seed 0 (time budget)" in out
  assert "skipped kid seed 0: its teacher slow seed 0 did not finish (time budget)" in out
  assert results(tmp_path)["kid"]["status"] == "skipped"


def test_a_rerun_starts_the_dependent_from_the_finished_source(tmp_path, capsys, fake_runs):
  runs = "t,configs/test.py,,0,1\ns,configs/test.py,,0,1,t\n"
  # First call: only the teacher; a results CSV with a skipped row does not count as finished.
  skip_csv = tmp_path / "committed.csv"
  skip_csv.write_text("name,seed,status\ns,0,skipped\n")
  assert launch(tmp_path, runs, "--only=t", f"--skip_csv={skip_csv}") == 0
  assert not (tmp_path / "root" / "s").exists()
  command_t = tmp_path / "root" / "t" / "seed_0" / "command.json"
  before = command_t.stat().st_mtime_ns
  # Second call: the teacher is not run again; the student starts from it.
  assert launch(tmp_path, runs, f"--skip_csv={skip_csv}") == 0
  out = capsys.readouterr().out
  assert "skip t seed 0: finished in" in out and "start s seed 0" in out
  assert command_t.stat().st_mtime_ns == before
  argv = json.loads((tmp_path / "root" / "s" / "seed_0" / "command.json").read_text())
  assert f"--config.distill.teacher_workdir={tmp_path / 'root' / 't' / 'seed_0'}" in argv


def test_only_a_dependent_whose_source_has_not_run_is_skipped(tmp_path, capsys, fake_runs):
  runs = "t,configs/test.py,,0,1\ns,configs/test.py,,0,1,t\n"
  assert launch(tmp_path, runs, "--only=s") == 0
  out = capsys.readouterr().out
  assert "skipped s seed 0: its teacher t seed 0 has not finished" in out


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_real_chain_hands_the_teachers_workdir_and_a_failed_source_skips(tmp_path, capsys):
  runs = (
    "teacher,configs/test.py,model.binary=False,0,1\n"
    "student,configs/test.py,,0,1,teacher\n"
    "broken,configs/test.py,optimizer.no_such_key=1,0,1\n"  # exits 2 before compiling
    "stage2,configs/test.py,,0,1,,broken\n"
  )
  assert launch(tmp_path, runs, "--parallel=2") == 1
  out = capsys.readouterr().out
  assert out.index("done teacher seed 0") < out.index("start student seed 0")
  assert "skipped stage2 seed 0: its init_from broken seed 0 failed" in out
  teacher = tmp_path / "root" / "teacher" / "seed_0"
  saved = json.loads((tmp_path / "root" / "student" / "seed_0" / "config.json").read_text())
  assert saved["distill.teacher_workdir"] == str(teacher)
  rows = results(tmp_path)
  assert {n: r["status"] for n, r in rows.items()} == {
    "teacher": "done",
    "student": "done",
    "stage2": "skipped",
  }
  assert rows["student"]["steps"] == "4" and rows["student"]["sources"] == "teacher=teacher/seed_0"
  assert pathlib.Path(teacher / "result.json").exists()
