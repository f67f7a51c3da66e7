"""Flax NNX binary layers: a Scale variable type, binary conv, dense and activation layers."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax import binary, conv

WEIGHT_SCALES = ("trainable", "mean_abs", "none")
SCALE_GRANULARITIES = ("channel", "layer")
SCALE_INITS = ("mean_abs", "one")
ACTIVATION_SCALES = ("trainable", "none")


class Scale(nnx.Param):
  """A trainable scaling factor of a binary layer: alpha (weights) or beta (activations)."""


class WeightScale(Scale):
  """alpha: the scale of a binary kernel, one per output channel (or one per layer)."""


class ActivationScale(Scale):
  """beta: the scale of a binary activation, one scalar per binarized input."""


class LatentWeight(nnx.Param):
  """The real-valued latent weights behind a binary kernel; the optimizer clips them to [-1, 1]."""


def _check_choice(what: str, value, allowed: Sequence) -> None:
  if value not in allowed:
    raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")


class BinaryActivation(nnx.Module):
  """beta * H(x) (or beta * sign(x)) with the chosen estimator; beta is one trainable scalar."""

  def __init__(
    self,
    *,
    mode: str = "step",
    estimator: str = "long_tailed",
    scale: str = "trainable",
    beta_init: float = 1.0,
  ):
    binary.check_activation_mode(mode)
    binary.check_estimator(estimator)
    _check_choice("activation scale", scale, ACTIVATION_SCALES)
    self.mode = mode
    self.estimator = estimator
    self.beta = (
      ActivationScale(jnp.asarray(beta_init, jnp.float32)) if scale == "trainable" else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    beta = jnp.ones((), x.dtype) if self.beta is None else self.beta[...].astype(x.dtype)
    return binary.binarize_activation(x, beta, self.mode, self.estimator)


class _BinaryKernel(nnx.Module):
  """Latent weights [..., in, out] and their scale alpha; `binary_kernel()` is alpha * sign(W).

  shape: the kernel's shape [..., in, out]; estimator: the weight binarizer's backward pass
  (binary.ESTIMATORS); scale, scale_per, scale_init: alpha (WEIGHT_SCALES, per output channel or
  per layer, initialized to mean |W| or 1); dtype: the compute dtype (None: that of the input).
  """

  def __init__(
    self,
    shape: tuple[int, ...],
    *,
    estimator: str = "higher_order",
    scale: str = "trainable",
    scale_per: str = "channel",
    scale_init: str = "mean_abs",
    kernel_init=nnx.initializers.lecun_normal(),
    dtype=None,
    rngs: nnx.Rngs,
  ):
    binary.check_estimator(estimator)
    _check_choice("weight scale", scale, WEIGHT_SCALES)
    _check_choice("weight scale granularity", scale_per, SCALE_GRANULARITIES)
    _check_choice("weight scale init", scale_init, SCALE_INITS)
    self.dtype = dtype
    w = kernel_init(rngs.params(), shape, jnp.float32)
    self.estimator = estimator
    self.scale = scale
    self.scale_per = scale_per
    self.kernel = LatentWeight(w)
    if scale == "trainable":
      alpha = (
        self._mean_abs(w)
        if scale_init == "mean_abs"
        else jnp.ones(self._alpha_shape(w), jnp.float32)
      )
      self.alpha = WeightScale(alpha)
    else:
      self.alpha = None

  def _alpha_shape(self, w):
    return (w.shape[-1],) if self.scale_per == "channel" else ()

  def _mean_abs(self, w):
    axes = tuple(range(w.ndim - 1)) if self.scale_per == "channel" else None
    return jnp.mean(jnp.abs(w), axis=axes)

  def effective_alpha(self) -> jax.Array:
    """alpha as used in the forward pass: shape [out] or []."""
    w = self.kernel[...]
    if self.scale == "trainable":
      return self.alpha[...]
    if self.scale == "mean_abs":
      # Magnitude-aware sign (XNOR-Net / Bi-Real): alpha follows W, no gradient through it.
      return jax.lax.stop_gradient(self._mean_abs(w))
    return jnp.ones(self._alpha_shape(w), w.dtype)

  def binary_kernel(self) -> jax.Array:
    """alpha * sign(W) with the configured estimator in the backward pass."""
    return binary.binarize_weight(self.kernel[...], self.effective_alpha(), self.estimator)

  def operands(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x and alpha * sign(W), both in the compute dtype (`dtype`, else that of x)."""
    kernel = self.binary_kernel()
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return x, kernel.astype(x.dtype)


class BinaryConv(_BinaryKernel):
  """2-D convolution (NHWC, no bias) with a binarized kernel [kh, kw, in, out]."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    **options,
  ):
    """options: those of _BinaryKernel (estimator, scales, kernel_init, dtype, rngs)."""
    self.strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    self.padding = padding
    super().__init__((*kernel_size, in_features, out_features), **options)

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = self.operands(x)
    # conv.conv2d: lax's convolution, with its gradients as matrix products on CPU.
    return conv.conv2d(x, kernel.astype(x.dtype), self.strides, self.padding)


class BinaryDense(_BinaryKernel):
  """Dense layer with a binarized kernel [in, out] and an optional full-precision bias."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = False,
    **options,
  ):
    """options: those of _BinaryKernel (estimator, scales, kernel_init, dtype, rngs)."""
    super().__init__((in_features, out_features), **options)
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = self.operands(x)
    y = x @ kernel
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


def is_variable(x) -> bool:
  """The is_leaf of tree functions over a train state's params (leaves are nnx.Variables)."""
  return isinstance(x, nnx.Variable)


def values_of_type(tree, kind: type) -> list[jax.Array]:
  """The values of every variable of type `kind` (e.g. WeightScale, LatentWeight) in `tree`."""
  return [v[...] for v in jax.tree.leaves(tree, is_leaf=is_variable) if isinstance(v, kind)]


def mean_scales(tree) -> dict[str, jax.Array]:
  """Mean alpha and beta of every binary layer: {"alpha/conv1": ..., "beta/act1": ...}."""
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]:
    if isinstance(var, Scale):
      names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
      kind = "alpha" if isinstance(var, WeightScale) else "beta"
      out[f"{kind}/{'.'.join(names[:-1])}"] = jnp.mean(var[...])
  return out
