"""2x2 stride-2 max-pool whose gradient is cheap on the CPU backend.

`max_pool_2x2(x)` is `nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")` (NHWC), the
same numbers forward and backward. Its gradient goes to the first maximum of each window in
row-major order (top-left, top-right, bottom-left, bottom-right), as XLA's select-and-scatter
does for `lax.reduce_window`'s max; ties (frequent in binary nets, whose conv outputs take few
values) resolve the same way.

Why: on XLA:CPU the gradient of `lax.reduce_window` max is a variadic reduce-window that carries
an int32 index array per dimension (four of the input's size) and a scatter; in VGG-Small's
train step at batch 64 that took about 200 ms of CPU time a step (profiled, 2-core AMD EPYC,
2026-11-26). Here the windows do not overlap, so the forward pass is a reshape and a max over
two axes, and the backward pass four elementwise comparisons, all fused. On GPU and TPU
`max_pool_2x2` is `nnx.max_pool` unchanged.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 and no padding over NHWC x [N, H, W, C] -> [N, H//2, W//2, C]."""
  if jax.default_backend() != "cpu" or x.ndim != 4:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
  n, h, w, c = x.shape
  return _pool(x[:, : h - h % 2, : w - w % 2])  # VALID drops an odd last row or column


def _windows(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H/2, 2, W/2, 2, C]: each 2x2 window on axes 2 and 4."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _pool(x: jax.Array) -> jax.Array:
  return jnp.max(_windows(x), axis=(2, 4))


def _pool_fwd(x):
  y = _pool(x)
  return y, (x, y)


def _pool_bwd(residuals, g):
  x, y = residuals
  windows = _windows(x)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    row = []
    for j in range(2):
      first = (windows[:, :, i, :, j] == y) & ~taken  # the first maximum in row-major order
      taken = taken | first
      row.append(jnp.where(first, g, jnp.zeros((), g.dtype)))
    rows.append(jnp.stack(row, axis=3))  # [N, H/2, W/2, 2, C]
  return (jnp.stack(rows, axis=2).reshape(x.shape),)  # [N, H/2, 2, W/2, 2, C] -> NHWC


_pool.defvjp(_pool_fwd, _pool_bwd)
