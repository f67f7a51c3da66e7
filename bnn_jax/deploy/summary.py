"""Size and compute accounting of a deployed binary network, per layer and in total.

Every figure comes from the exported Program itself, so the deployed size is, byte for byte, the
payload of the file `bnn_jax.deploy.export` writes (the file adds only its header).

  summary.of_model(model, image_shape).table()   # or summary.summarize(program)
  python -m bnn_jax.deploy.summary --config=configs/vgg_small.py   # any config, untrained weights
"""

import dataclasses

import numpy as np
from absl import flags

from bnn_jax.deploy import lowering
from bnn_jax.deploy.program import Op, Program, to_bytes
from bnn_jax.errors import InputError

MIB = 2**20
_INPUT_BITS = {"float": "32f", "bits": "1", "counts": "32i"}
_OUTPUT_KIND = {
  "binarize": "bits",
  "threshold": "bits",
  "binary_conv": "counts",
  "binary_dense": "counts",
  "unpack": "float",
  "scale_shift": "float",
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One op of the program. MACs are multiply-accumulates for one image."""

  name: str
  kind: str
  input_bits: str  # "32f" float, "1" packed bits, "32i" integer counts
  weight_bits: str  # "32", "1" or "" (no weights)
  params_1bit: int  # binary weights and per-channel flip flags
  params_32bit: int  # float32 weights and terms, int32 thresholds
  nbytes: int  # bytes of this op's arrays in the file
  float32_nbytes: int  # the same op in a float32 network
  binary_macs: int
  float_macs: int
  output_shape: tuple[int, ...]
  folds: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Summary:
  """Per-op rows and totals. Sizes in bytes; `weights_*` count conv and dense weights and biases
  only (the paper's accounting, BatchNorm and scales aside)."""

  rows: tuple[Row, ...]
  weights_float32_bytes: int
  weights_deployed_bytes: int

  @property
  def deployed_bytes(self) -> int:
    return sum(r.nbytes for r in self.rows)

  @property
  def float32_bytes(self) -> int:
    return sum(r.float32_nbytes for r in self.rows)

  @property
  def compression(self) -> float:
    return self.float32_bytes / max(1, self.deployed_bytes)

  @property
  def binary_macs(self) -> int:
    return sum(r.binary_macs for r in self.rows)

  @property
  def float_macs(self) -> int:
    return sum(r.float_macs for r in self.rows)

  @property
  def binary_mac_share(self) -> float:
    return self.binary_macs / max(1, self.binary_macs + self.float_macs)

  def table(self) -> str:
    """A plain-text table, one line per op, then the totals."""
    head = ("op", "kind", "in", "w", "1-bit", "32-bit", "bytes", "binary MACs", "fp MACs", "output")
    lines = [
      (
        r.name + (f" (+{','.join(r.folds)})" if r.folds else ""),
        r.kind,
        r.input_bits,
        r.weight_bits,
        f"{r.params_1bit:,}",
        f"{r.params_32bit:,}",
        f"{r.nbytes:,}",
        f"{r.binary_macs:,}",
        f"{r.float_macs:,}",
        "x".join(map(str, r.output_shape)),
      )
      for r in self.rows
    ]
    total_1 = sum(r.params_1bit for r in self.rows)
    total_32 = sum(r.params_32bit for r in self.rows)
    lines.append(
      (
        "total",
        "",
        "",
        "",
        f"{total_1:,}",
        f"{total_32:,}",
        f"{self.deployed_bytes:,}",
        f"{self.binary_macs:,}",
        f"{self.float_macs:,}",
        "",
      )
    )
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    fmt = lambda row: "  ".join(
      str(c).ljust(w) if i < 4 or i == 9 else str(c).rjust(w)
      for i, (c, w) in enumerate(zip(row, widths))
    ).rstrip()
    rule = "-" * len(fmt(head))
    out = [fmt(head), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1]), ""]
    out += [
      f"deployed size      {self.deployed_bytes:>12,} bytes = {self.deployed_bytes / MIB:.3f} MiB",
      f"float32 size       {self.float32_bytes:>12,} bytes = {self.float32_bytes / MIB:.3f} MiB",
      f"compression        {self.compression:.1f}x",
      f"weights only       {self.weights_float32_bytes / MIB:.3f} MiB float32 -> "
      f"{self.weights_deployed_bytes / MIB:.3f} MiB "
      f"({self.weights_float32_bytes / max(1, self.weights_deployed_bytes):.1f}x; BatchNorm "
      f"and scales aside, the paper's accounting)",
      f"binary MACs        {self.binary_mac_share:.1%} of {self.binary_macs + self.float_macs:,}"
      f" per image",
    ]
    return "\n".join(out)


def _row(op: Op, input_kind: str) -> tuple[Row, int, int]:
  """The op's row, and its conv/dense weights in bytes as float32 and as deployed."""
  a = op.arrays
  nbytes = sum(v.nbytes for v in a.values())
  weight_bits, p1, p32, bin_macs, fp_macs = "", 0, 0, 0, 0
  w32 = wdep = 0
  float32_nbytes = nbytes
  out_positions = int(np.prod(op.shape[:-1], dtype=np.int64)) if len(op.shape) > 1 else 1
  if op.kind in ("binary_conv", "binary_dense"):
    weight_bits = "1"
    taps = int(np.prod(op.attrs.get("kernel_size", [1]), dtype=np.int64))
    p1 = taps * op.attrs["in_features"] * op.attrs["out_features"]
    bin_macs = out_positions * p1
    float32_nbytes = 4 * p1
    w32, wdep = 4 * p1, a["weights"].nbytes
  elif op.kind in ("conv", "dense"):
    weight_bits = "32"
    p32 = sum(v.size for v in a.values())
    kernel = a["kernel"]
    fp_macs = out_positions * kernel.size
    w32 = wdep = nbytes
  elif op.kind == "threshold":
    p32 = a["thresholds"].size
    p1 = op.shape[-1]  # flip flags
  else:  # BatchNorm and folded affine terms (float32); max_pool directions (int8, rare)
    p32 = sum(v.size for v in a.values() if v.dtype.itemsize == 4)
  prefix = op.name.rpartition(".")[0]  # "stage1_block1.act2 (+bn2)", not (+stage1_block1.bn2)
  folds = tuple(
    f.removeprefix(f"{prefix}.") if prefix else f for f in op.attrs.get("folds", ()) if f != op.name
  )
  if op.kind in ("threshold", "scale_shift"):
    # In the float32 network every folded BatchNorm keeps mean, var, scale and bias.
    float32_nbytes = 16 * op.shape[-1] * len(op.attrs.get("folds", ()))
  row = Row(
    name=op.name,
    kind=op.kind,
    input_bits=_INPUT_BITS[input_kind],
    weight_bits=weight_bits,
    params_1bit=p1,
    params_32bit=p32,
    nbytes=nbytes,
    float32_nbytes=float32_nbytes,
    binary_macs=bin_macs,
    float_macs=fp_macs,
    output_shape=tuple(op.shape),
    folds=folds,
  )
  return row, w32, wdep


def summarize(program: Program) -> Summary:
  """Per-op sizes (bits and bytes) and multiply-accumulates of `program`, and totals."""
  kinds = {"input": "float"}
  rows, w32, wdep = [], 0, 0
  for op in program.ops:
    input_kind = kinds[op.inputs[0]]
    kinds[op.name] = _OUTPUT_KIND.get(op.kind, input_kind)
    row, a, b = _row(op, input_kind)
    rows.append(row)
    w32, wdep = w32 + a, wdep + b
  return Summary(tuple(rows), w32, wdep)


def of_model(model, image_shape) -> Summary:
  """The summary of `model` deployed on images of `image_shape` (H, W, C)."""
  return summarize(lowering.lower(model, tuple(image_shape)))


def input_of(config) -> tuple[tuple[int, int, int], int]:
  """(image shape, number of classes) of config's data, from the registry; no data is read."""
  from bnn_jax.data import DATASETS

  name = config.data.name
  if name == "fake":
    return tuple(config.data.fake_image_shape), config.data.fake_num_classes
  info = DATASETS.get(name)
  if info is None or info.image_shape is None:
    known = [k for k, v in DATASETS.items() if v.image_shape is not None]
    raise InputError(
      f"data.name {name!r} has no known input shape; allowed: fake, {', '.join(known)} "
      f"(or export a trained workdir with bnn_jax.deploy.export)"
    )
  if info.host_fed:
    return (config.data.image_size, config.data.image_size, 3), info.num_classes
  return info.image_shape, info.num_classes


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (modules share absl's flags)."""
  from bnn_jax import cli

  cli.define_config_flag()
  flags.mark_flags_as_required(["config"])


def main(argv, config):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r}; give --config=FILE only")
  from flax import nnx

  from bnn_jax import models

  image_shape, num_classes = input_of(config)
  try:
    model = models.create_model(config, num_classes, image_shape, nnx.Rngs(config.seed))
  except ValueError as e:  # a model option that does not fit (models raise ValueError)
    raise InputError(str(e)) from e
  program = lowering.lower(model, image_shape)
  print(
    f"{config.model.name} ({'binary' if config.model.binary else 'float'}), input "
    f"{'x'.join(map(str, image_shape))}, {num_classes} classes"
  )
  print(summarize(program).table())
  print(f"file size          {len(to_bytes(program)):>12,} bytes (the exported file)")


if __name__ == "__main__":
  from bnn_jax import cli

  define_flags()
  cli.run(main, with_config=True)
