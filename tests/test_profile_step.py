"""benchmarks/profile_step.py: which trace events count as XLA ops (device lines on a GPU, the
host's hlo_op events on a CPU), the table they make, and a real trace of a shrunk VGG-Small."""

import gzip
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import trace_ops  # noqa: E402  (no absl flags: importing profile_step would define them)


def meta(pid, name, tid=None):
  kind = "thread_name" if tid is not None else "process_name"
  return {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}


def op(pid, tid, name, ts, dur, hlo_op=None):
  args = {"hlo_op": hlo_op} if hlo_op else {}
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}


GPU_TRACE = [
  meta(1, "/host:CPU"),
  meta(1, "python", tid=1),
  meta(2, "/device:GPU:0"),
  meta(2, "Stream #14(Compute)", tid=14),
  meta(2, "XLA Modules", tid=100),
  op(1, 1, "launch", 0, 50, hlo_op="fusion.1"),  # host side of a launch: not device time
  op(2, 100, "jit_step", 0, 100),  # the module around the ops: would count them twice
  op(2, 14, "sm90_xmma_fprop_kernel", 0, 30, hlo_op="convolution.3"),
  op(2, 14, "sm90_xmma_fprop_kernel", 40, 30, hlo_op="convolution.4"),
  op(2, 14, "loop_add_fusion", 80, 10, hlo_op="fusion.7"),
  op(2, 14, "MemcpyD2D", 95, 5),
]


def test_device_ops_are_the_streams_kernels_by_hlo_op_without_derived_lines():
  source, events = trace_ops.op_events(GPU_TRACE)
  assert source == "device, kernels of its streams by hlo_op"
  assert [trace_ops.op_name(e) for e in events] == [
    "convolution.3",
    "convolution.4",
    "fusion.7",
    "MemcpyD2D",
  ]
  # An "XLA Ops" line, where the trace has one, is the ops' own (the kernels would repeat it).
  with_line = GPU_TRACE + [meta(2, "XLA Ops", tid=101), op(2, 101, "convolution.3", 0, 31)]
  source, events = trace_ops.op_events(with_line)
  assert source == "device, the trace's XLA Ops line" and len(events) == 1


def test_host_ops_on_a_cpu_are_the_events_that_name_an_hlo_op():
  trace = [
    meta(7, "/host:CPU"),
    op(7, 3, "ynn_fusion", 0, 20, hlo_op="ynn_fusion.2"),
    op(7, 3, "end: ynn_fusion", 20, 1),
    op(7, 4, "ThunkExecutor::Execute (wait for completion)", 0, 25),
  ]
  source, events = trace_ops.op_events(trace)
  assert source.startswith("host CPU threads") and len(events) == 1


def test_the_table_sums_by_op_and_by_kind_and_busy_time_merges_overlaps():
  _, events = trace_ops.op_events(GPU_TRACE)
  lines, total_us = trace_ops.summarize(events, steps=2, top=2)
  assert total_us == 75
  text = "\n".join(lines)
  assert "top 2 ops by time" in text and "top 2 kinds of op by time" in text
  rows = [line.split() for line in lines if re.match(r" +\d+  ", line)]
  assert rows[0][:4] == ["1", "convolution.3", "1", "0.030"] and rows[0][4] == "0.015"
  assert rows[2][:3] == ["1", "convolution", "2"] and rows[2][-2] == "80.0"  # 60 of 75 us
  assert trace_ops.kind("fusion.12") == "fusion" and trace_ops.kind("dot") == "dot"
  overlapping = [op(0, 0, "a", 0, 10), op(0, 1, "b", 5, 10), op(0, 0, "c", 30, 5)]
  assert trace_ops.busy_us(overlapping) == 15 + 5


def table_rows(text: str, title: str) -> list[list[str]]:
  block = text.split(title, 1)[1].split("\n\n", 1)[0]
  return [line.split() for line in block.splitlines()[2:] if line.strip()]


def check_profile(path: pathlib.Path, variant: str, batch: int, steps: int) -> None:
  """The table at `path` is a real profile: settings, real op names, times that add up."""
  text = path.read_text()
  assert text.startswith("machine: ") and f"({variant}), model vgg_small" in text
  assert f"batch {batch}, compute float32; {steps} steps traced" in text
  wall = float(re.search(r"traced steps: ([\d.]+) ms wall", text).group(1))
  summed, busy = map(float, re.search(r"ops: ([\d.]+) ms summed .*busy ([\d.]+) ms", text).groups())
  kinds = table_rows(text, "kinds of op by time")
  ops = table_rows(text, "ops by time")
  assert any(row[1].startswith("convolution") for row in kinds), kinds  # real XLA op names
  assert all(int(row[2]) % steps == 0 for row in ops)  # each op runs once (or n times) a step
  for row in ops:
    total_ms, per_step = float(row[3]), float(row[4])
    assert per_step == pytest.approx(total_ms / steps, abs=2e-3)
  assert sum(float(row[3]) for row in ops) <= summed + 0.01 * len(ops)
  shares = [float(row[5]) for row in kinds]
  assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5
  assert 0 < busy <= summed + 1e-3 and busy <= wall * 1.05  # the ops lie inside the traced steps
  with gzip.open(path.with_name(path.stem + ".trace.json.gz"), "rt") as f:
    assert json.load(f)["traceEvents"]  # the raw trace kept beside it


@pytest.mark.slow  # compiles a shrunk binary VGG-Small train step (about 15 s of CPU)
def test_a_shrunk_vgg_small_step_profile_lists_real_ops(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "profile_step.py"),
      "--config=configs/vgg_small.py",
      "--config.model.width=0.0625",
      "--batch_size=2",
      "--steps=2",
      "--warmup=1",
      f"--output={tmp_path / 'profile_binary.txt'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  check_profile(tmp_path / "profile_binary.txt", "binary", batch=2, steps=2)
  assert out.stdout == (tmp_path / "profile_binary.txt").read_text()


def test_train_speeds_own_flags_are_refused(tmp_path):
  out = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--variants=float"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 2 and "--variants is train_speed.py's" in out.stderr
