"""Binarizers with hand-written gradients (jax.custom_vjp); pure jax, no flax.

Trained binarization (Xu & Cheung, BMVC 2019), as docs/method.md describes it:

* activations: ``a_b = beta * H(x)`` with the unit step ``H(x) = 1 if x > 0 else 0``
  (``mode="step"``), or ``beta * (2 H(x) - 1)`` with values {-beta, +beta} (``mode="sign"``);
* weights: ``W_b = alpha * sign(W)`` with ``sign(0) = +1``.

The backward pass replaces the derivative of H or sign, zero almost everywhere, by an
*estimator* (a surrogate derivative). Each estimator is written for the function it was
published for (its *target*): the paper's long-tailed estimator approximates ``H'``, the others
approximate ``sign'``. Applied to the other function it is converted exactly (``sign = 2 H - 1``):
doubled from step to sign, halved from sign to step. Nothing is renormalized.

| name           | formula                                                  | target |
|----------------|----------------------------------------------------------|--------|
| `long_tailed`  | 2 - 4|x| for |x| <= 0.4; 0.4 for 0.4 < |x| <= 1; else 0  | step   |
| `higher_order` | max(0, 2 - 4|x|)                                         | sign   |
| `approx_sign`  | 2 - 2|x| for |x| <= 1, else 0  (Bi-Real)                 | sign   |
| `ste`          | 1 for |x| <= 1, else 0  (clipped straight-through)        | sign   |
| `swish_sign`   | b (2 - b x tanh(b x / 2)) / (1 + cosh(b x)), b = 5 (BNN+) | sign   |

Gradients to the scales are exact: the forward pass is linear in alpha and beta.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

SWISH_SIGN_BETA = 5.0


def _long_tailed(x):
  a = jnp.abs(x)
  return jnp.where(a <= 0.4, 2.0 - 4.0 * a, jnp.where(a <= 1.0, 0.4, 0.0))


def _higher_order(x):
  return jnp.maximum(0.0, 2.0 - 4.0 * jnp.abs(x))


def _approx_sign(x):
  a = jnp.abs(x)
  return jnp.where(a <= 1.0, 2.0 - 2.0 * a, 0.0)


def _ste(x):
  return jnp.where(jnp.abs(x) <= 1.0, 1.0, 0.0)


def _swish_sign(x):
  bx = SWISH_SIGN_BETA * x
  return SWISH_SIGN_BETA * (2.0 - bx * jnp.tanh(bx / 2.0)) / (1.0 + jnp.cosh(bx))


# name -> (surrogate derivative, the function it approximates the derivative of)
ESTIMATORS: dict[str, tuple[Callable[[jax.Array], jax.Array], str]] = {
  "long_tailed": (_long_tailed, "step"),
  "higher_order": (_higher_order, "sign"),
  "approx_sign": (_approx_sign, "sign"),
  "ste": (_ste, "sign"),
  "swish_sign": (_swish_sign, "sign"),
}
ACTIVATION_MODES = ("step", "sign")


def check_estimator(name: str) -> None:
  """Raises ValueError naming `name` and the allowed estimators if it is unknown."""
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(sorted(ESTIMATORS))}")


def check_activation_mode(mode: str) -> None:
  """Raises ValueError naming `mode` and the allowed modes if it is unknown."""
  if mode not in ACTIVATION_MODES:
    raise ValueError(f"unknown activation mode {mode!r}; allowed: {', '.join(ACTIVATION_MODES)}")


def surrogate_derivative(estimator: str, x: jax.Array, target: str) -> jax.Array:
  """The estimator's value at `x` as a derivative of `target` ("step" or "sign")."""
  check_estimator(estimator)
  fn, own_target = ESTIMATORS[estimator]
  factor = {("step", "sign"): 2.0, ("sign", "step"): 0.5}.get((own_target, target), 1.0)
  return (factor * fn(x)).astype(x.dtype)


def unit_step(x: jax.Array) -> jax.Array:
  """H(x): 1 where x > 0, else 0, in x's dtype."""
  return (x > 0).astype(x.dtype)


def sign(x: jax.Array) -> jax.Array:
  """sign with sign(0) = +1, in x's dtype."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def activation_levels(x: jax.Array, mode: str) -> jax.Array:
  """The unscaled binary activation: H(x) in {0, 1} or 2 H(x) - 1 in {-1, +1}."""
  check_activation_mode(mode)
  h = unit_step(x)
  return h if mode == "step" else 2 * h - 1


def _sum_to_shape(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums `t` over the axes along which an array of `shape` was broadcast to t.shape."""
  lead = t.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(
    lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
  )
  return jnp.sum(t, axis=axes, keepdims=False).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def binarize_activation(
  x: jax.Array, beta: jax.Array, mode: str = "step", estimator: str = "long_tailed"
) -> jax.Array:
  """beta * H(x) (mode "step") or beta * (2 H(x) - 1) (mode "sign").

  Args:
    x: pre-activations, any shape.
    beta: the activation scale, broadcastable to x (a scalar or one value per channel).
    mode: "step" (values {0, beta}) or "sign" (values {-beta, +beta}).
    estimator: name in ESTIMATORS; dL/dx = dL/da * beta * estimator(x).
  """
  return beta * activation_levels(x, mode)


def _binarize_activation_fwd(x, beta, mode, estimator):
  return binarize_activation(x, beta, mode, estimator), (x, beta)


def _binarize_activation_bwd(mode, estimator, residuals, g):
  x, beta = residuals
  dx = g * beta * surrogate_derivative(estimator, x, mode)
  dbeta = _sum_to_shape(g * activation_levels(x, mode), jnp.shape(beta))
  return dx.astype(x.dtype), dbeta.astype(jnp.result_type(beta))


binarize_activation.defvjp(_binarize_activation_fwd, _binarize_activation_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def binarize_weight(w: jax.Array, alpha: jax.Array, estimator: str = "higher_order") -> jax.Array:
  """alpha * sign(w), sign(0) = +1.

  Args:
    w: latent real-valued weights, e.g. a conv kernel [H, W, I, O] or dense kernel [I, O].
    alpha: the weight scale, broadcastable to w: shape [O] (one per output channel) or [].
    estimator: name in ESTIMATORS; dL/dw = dL/dW_b * alpha * estimator(w).
  """
  return alpha * sign(w)


def _binarize_weight_fwd(w, alpha, estimator):
  return binarize_weight(w, alpha, estimator), (w, alpha)


def _binarize_weight_bwd(estimator, residuals, g):
  w, alpha = residuals
  dw = g * alpha * surrogate_derivative(estimator, w, "sign")
  dalpha = _sum_to_shape(g * sign(w), jnp.shape(alpha))
  return dw.astype(w.dtype), dalpha.astype(jnp.result_type(alpha))


binarize_weight.defvjp(_binarize_weight_fwd, _binarize_weight_bwd)
