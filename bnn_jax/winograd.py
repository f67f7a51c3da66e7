"""Winograd F(4x4, 3x3) transforms for the kernel gradient of a 3x3 stride-1 convolution.

Lavin & Gray 2016, interpolation points 0, +-1, +-2 and infinity: a 4x4 output tile is
Y = A^T [(G w G^T) * (B^T d B)] A, computed from a 6x6 input tile d with 36 products instead of
144. `bnn_jax.conv` uses these transforms for the kernel gradient on the CPU (see its docstring
for when). The forward pass never uses them: it stays XLA's convolution, bit for bit.
"""

import jax.numpy as jnp
import numpy as np

# 3x3 stride-1 float32 kernels with at least this many input channels per group take Winograd
# for their kernel gradient; thinner ones (3-channel stems) measured faster with im2col.
MIN_CHANNELS = 16

# float64, so that float64 inputs keep their precision; float32 inputs round 1/6, 1/12 and 1/24 to
# the same float32 constants as the float32 tables did.
BT = np.array(
  [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  np.float64,
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
  np.float64,
)
AT = np.array(
  [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64
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


def _tile_transform(x, m, tiles):
  """M d M^T of every tile d (m.shape[1] wide, stride 4) of x [n, 4*th + m.shape[1] - 4, ...,
  C] -> [p*p, n*th*tw, C] for M [p, m.shape[1]].

  Separably: M over the tiles' rows for all columns at once, stacked, then over the columns
  (measured 1.7-2x faster than combining up to 16 slices of x for each of the 36 points).
  """
  (th, tw), (p, taps), c = tiles, m.shape, x.shape[3]
  rows = [x[:, u : u + TILE * th : TILE] for u in range(taps)]  # [n, th, W, C]
  r = jnp.stack([_combine(m[i], rows) for i in range(p)])  # [p, n, th, W, C]
  columns = [r[:, :, :, v : v + TILE * tw : TILE] for v in range(taps)]  # [p, n, th, tw, C]
  return jnp.stack([_combine(m[j], columns) for j in range(p)], axis=1).reshape(p * p, -1, c)


def input_tiles(xp, tiles):
  """B^T d B of every 6x6 tile d (stride 4) of xp [n, 4*th + 2, 4*tw + 2, C] -> [36, n*th*tw, C]."""
  return _tile_transform(xp, BT, tiles)


def output_grad_tiles(gp):
  """A dY A^T of every 4x4 tile dY of gp [n, 4*th, 4*tw, Cout] -> [36, n*th*tw, Cout]."""
  return _tile_transform(gp, AT.T, (gp.shape[1] // TILE, gp.shape[2] // TILE))


def kernel_from_tiles(du):
  """G^T dU G: du [6, 6, Cin, Cout] (the gradient of U = G w G^T) -> dw [3, 3, Cin, Cout].

  As constant-weighted sums, G^T over the first axis then G over the second (measured 2.7-7x
  faster than an einsum, which XLA ran as a [Cin*Cout*6, 6] x [6, 3] product).
  """
  a = TILE + 2
  r = jnp.stack([_combine(G[:, i], [du[p] for p in range(a)]) for i in range(3)])  # [3, 6, ...]
  return jnp.stack([_combine(G[:, j], [r[:, q] for q in range(a)]) for j in range(3)], axis=1)
