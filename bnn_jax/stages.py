"""A network's forward pass written once, as data: named stages that training and export walk.

Each model lists its forward pass in its property `stages`: a list of the stages below.
`forward` runs that list for training and evaluation; `bnn_jax.deploy.lowering` walks the same
list into a Program. So the layer order of a network exists in one place, and a mistake in it
shows up as a difference between the model and the known layouts its tests spell out, not in
both copies.

A stage's `name` names its output value; `inputs` name earlier values ("input" is the module's
input); no inputs means the previous stage's output. A `Layer` applies the module's attribute of
the same name: a conv, dense, BatchNorm, binary activation or activation function, or a block
(a module with its own `stages`, walked in turn: a residual block).
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INPUT = "input"  # the name of a module's input among the values its stages read


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a forward pass; `run` is its training (and evaluation) semantics."""

  name: str
  _: dataclasses.KW_ONLY
  inputs: tuple[str, ...] = ()

  def run(self, module: nnx.Module, *xs: jax.Array, train: bool) -> jax.Array:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Layer(Stage):
  """`getattr(module, name)` applied to the input; BatchNorm uses its running averages unless
  training, a block gets `train`."""

  def run(self, module, x, *, train):
    layer = getattr(module, self.name)
    if isinstance(layer, nnx.BatchNorm):
      return layer(x, use_running_average=not train)
    if is_staged(layer):
      return layer(x, train=train)
    return layer(x)


@dataclasses.dataclass(frozen=True)
class MaxPool(Stage):
  """`pool(x)`, a max-pool over NHWC with this window, stride and padding ("VALID", "SAME" or
  (low, high) pairs); the export reads the geometry, training calls `pool`."""

  pool: Callable[[jax.Array], jax.Array]
  window: tuple[int, int]
  strides: tuple[int, int]
  padding: str | Sequence[tuple[int, int]] = "VALID"

  def run(self, module, x, *, train):
    return self.pool(x)


@dataclasses.dataclass(frozen=True)
class Relu(Stage):
  """max(x, 0), for an activation that is not a module attribute (ResNet's stem)."""

  def run(self, module, x, *, train):
    return nnx.relu(x)


@dataclasses.dataclass(frozen=True)
class Flatten(Stage):
  """[B, H, W, C] -> [B, H * W * C] in NHWC order."""

  def run(self, module, x, *, train):
    return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Stage):
  """[B, H, W, C] -> [B, C], the mean over the spatial axes."""

  def run(self, module, x, *, train):
    return jnp.mean(x, axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class Add(Stage):
  """The sum of its two inputs (a residual connection)."""

  def run(self, module, x, y, *, train):
    return x + y


def is_staged(module) -> bool:
  """Whether `module` describes its forward pass with a `stages` property."""
  # A property, not a method: nnx.capture(..., method_outputs=...) records what every public
  # method returns, and a list of stages is not an array.
  return isinstance(getattr(type(module), "stages", None), property)


def walk(module: nnx.Module, x, step: Callable):
  """Goes through `module.stages` in order; step(stage, input values) gives each output.

  Returns the last stage's output. The values are whatever `step` makes of them: arrays in
  training, lowered values in the export.
  """
  values = {INPUT: x}
  for stage in module.stages:
    if stage.name in values:
      raise ValueError(f"stage name {stage.name!r} of {type(module).__name__} is used twice")
    args = [values[name] for name in stage.inputs] if stage.inputs else [x]
    x = values[stage.name] = step(stage, args)
  return x


def forward(module: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
  """module's forward pass: its stages run on x in order (train: batch statistics)."""
  return walk(module, x, lambda stage, args: stage.run(module, *args, train=train))
