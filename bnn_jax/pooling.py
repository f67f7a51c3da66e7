"""2x2 stride-2 max-pool whose gradient is cheap on the CPU backend.

`max_pool_2x2(x)` is `nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")` (NHWC), bit
for bit forward and backward, NaN, +-inf and +-0 included. Its gradient goes where XLA's
select-and-scatter sends `lax.reduce_window` max's: it walks each window in row-major order
(top-left, top-right, bottom-left, bottom-right), keeping the element it holds where that is >=
the next one and taking the next one otherwise. So ties (frequent in binary nets, whose conv
outputs take few values) send the gradient to the first maximum, and in a window holding a NaN
it goes to the element the walk ends on (not necessarily the NaN: the 2 of [NaN, 1, 2, 0]).

Why: on XLA:CPU the gradient of `lax.reduce_window` max is a variadic reduce-window that carries
an int32 index array per dimension (four of the input's size) and a scatter; in VGG-Small's
train step at batch 64 that took about 200 ms of CPU time a step (profiled, 2-core AMD EPYC,
2026-11-26). Here the windows do not overlap, so the forward pass is a reshape and a max over
two axes, and the backward pass that walk (three comparisons) and four selects, all fused. On
GPU and TPU `max_pool_2x2` is `nnx.max_pool` unchanged.
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
  return _pool(x), x


def _pool_bwd(x, g):
  # XLA's select-and-scatter for reduce_window's max walks each window in row-major order and
  # moves to the next element unless the one it holds is >= it. So ties keep the first maximum,
  # and a NaN (never >= nor <= anything) is taken when met and left for the next element.
  windows = _windows(x)
  taps = [windows[:, :, i, :, j] for i in range(2) for j in range(2)]  # [N, H/2, W/2, C] each
  best, pick = taps[0], jnp.zeros(g.shape, jnp.int8)
  for k in range(1, 4):
    move = ~(best >= taps[k])
    best, pick = jnp.where(move, taps[k], best), jnp.where(move, jnp.int8(k), pick)
  zero = jnp.zeros((), g.dtype)
  grads = [jnp.where(pick == k, g, zero) for k in range(4)]
  rows = [jnp.stack(grads[2 * i : 2 * i + 2], axis=3) for i in range(2)]  # [N, H/2, W/2, 2, C]
  return (jnp.stack(rows, axis=2).reshape(x.shape),)  # [N, H/2, 2, W/2, 2, C] -> NHWC


_pool.defvjp(_pool_fwd, _pool_bwd)
