"""Winograd F(4x4, 3x3) transforms for the kernel gradient of a 3x3 stride-1 convolution.

Lavin & Gray 2016, interpolation points 0, +-1, +-2 and infinity: a 4x4 output tile is
Y = A^T [(G w G^T) * (B^T d B)] A, computed from a 6x6 input tile d with 36 products instead of
144. `bnn_jax.conv` uses these transforms for the kernel gradient on the CPU (see its docstring
for when). The forward pass never uses them: it must stay bit-exact.
"""

import jax.numpy as jnp
import numpy as np

# 3x3 stride-1 float32 kernels with at least this many input channels per group take Winograd
# for their kernel gradient; thinner ones (3-channel stems) measured faster with im2col.
MIN_CHANNELS = 16

BT = np.array(
  [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  np.float32,
)
G = np.array(
  [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  np.float32,
)
AT = np.array(
  [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float32
)
TILE = 4  # output tile side; input tiles are TILE + 2 = 6 wide and overlap by 2


def applies(kernel_shape, strides, groups, dtype, out_hw) -> bool:
  """Whether the kernel gradient goes by Winograd: float32 only (the transforms' 1/6 and 1/24
  would round in bfloat16), outputs of at least 8x8 that whole 4x4 tiles cover with at most a
  third more pixels (measured: 13x13, padded to 16x16, no faster than im2col; 7x7 slower)."""
  (ho, wo), tile = out_hw, TILE
  padded = (-(-ho // tile) * tile) * (-(-wo // tile) * tile)
  return (
    tuple(kernel_shape[:2]) == (3, 3)
    and strides == (1, 1)
    and groups == 1
    and dtype == jnp.float32
    and kernel_shape[2] >= MIN_CHANNELS
    and min(ho, wo) >= 8
    and 3 * padded <= 4 * ho * wo
  )


def _combine(coefficients, terms):
  """sum_k coefficients[k] * terms[k], skipping zero coefficients and multiplying by +-1 free."""
  total = None
  for c, t in zip(coefficients.tolist(), terms):
    if c == 0:
      continue
    t = t if c == 1 else -t if c == -1 else c * t
    total = t if total is None else total + t
  return total


def input_tiles(xp, tiles):
  """B^T d B of every 6x6 tile d (stride 4) of xp [n, 4*th + 2, 4*tw + 2, C] -> [36, n*th*tw, C]."""
  (th, tw), a, c = tiles, TILE + 2, xp.shape[3]
  d = [[xp[:, u : u + TILE * th : TILE, v : v + TILE * tw : TILE] for v in range(a)]
       for u in range(a)]  # fmt: skip
  rows = [[_combine(BT[p], [d[u][v] for u in range(a)]) for v in range(a)] for p in range(a)]
  out = [_combine(BT[q], rows[p]) for p in range(a) for q in range(a)]
  return jnp.stack(out).reshape(a * a, -1, c)


def output_grad_tiles(gp):
  """A dY A^T of every 4x4 tile dY of gp [n, 4*th, 4*tw, Cout] -> [36, n*th*tw, Cout]."""
  a, c = TILE + 2, gp.shape[3]
  y = [[gp[:, r::TILE, s::TILE] for s in range(TILE)] for r in range(TILE)]
  rows = [[_combine(AT[:, p], [y[r][s] for r in range(TILE)]) for s in range(TILE)]
          for p in range(a)]  # fmt: skip
  out = [_combine(AT[:, q], rows[p]) for p in range(a) for q in range(a)]
  return jnp.stack(out).reshape(a * a, -1, c)
