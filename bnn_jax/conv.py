"""2-D convolution whose gradients run as matrix products on the CPU backend.

XLA:CPU computes a convolution's forward pass and its input gradient at about the speed of a
matrix product, but the kernel gradient (a "convolution" whose window is the whole image) two to
four times slower at batch 64. `conv2d` is `lax.conv_general_dilated` (NHWC input, HWIO kernel,
NHWC output) with a `jax.custom_vjp` whose backward pass computes

* the kernel gradient of 3x3 stride-1 float32 convs on images of 8x8 and more (every binary
  conv of VGG-Small on CIFAR-10) by Winograd F(4x4, 3x3) (`bnn_jax/winograd.py`): 36 matrix
  products [Cin, tiles] [tiles, Cout] of transformed input and output-gradient tiles, 4x fewer
  multiplications than im2col. Its float32 rounding error, against float64, is at most 1.18e-5
  of the largest entry on the model layers that take it, 0.7 to 22 times that of XLA's float32
  kernel gradient (4.4e-7 to 7.8e-6) (benchmarks/winograd_error.py, batch 16, 2 seeds,
  2026-12-05); tests/test_conv.py bounds it at 3e-5;
* every other kernel gradient as G^T [Cout, N*Ho*Wo] cols [N*Ho*Wo, kh*kw*Cin], where cols
  (im2col) holds the input each kernel tap sees at each output pixel. This measured faster than
  one product per tap (thin, and each tap's input copied out first);
* both a few images at a time (CHUNK_BYTES), so that the transformed tiles or cols are still in
  cache when the product reads them (one im2col of the whole batch writes and rereads hundreds
  of MB), summed over the chunks in a loop;
* the input gradient with XLA's own transposed convolution, except for 1x1 kernels with a
  stride (ResNet's downsample): there G W^T [N*Ho*Wo, Cin] placed at the strided positions
  (col2im), which measured faster than XLA's input-dilated convolution. For larger strided
  kernels col2im measured no faster than XLA, for stride 1 XLA is as fast as the forward pass.

What holds (tests/test_conv.py): the forward pass is XLA's convolution, bit for bit, on every
path; the gradients equal lax's to float32 rounding (relative 1e-5, absolute 1e-4 on unit-normal
inputs); float64 inputs give float64 gradients at float64 precision (within 1e-13 of the largest
entry); with `matmul_gradients=False` the gradients are lax's own, bit for bit. The forward pass
stays XLA's because shifted products and im2col measured no faster, and the deployment tests
require the engine's activation bits to equal the training graph's. (A Winograd
F(2x2, 3x3) forward pass measured 1.2-1.4x faster on 16x16 and 32x32 images but is not
bit-exact. F(4x4, 3x3) as a convolution, for the input gradient, measured no faster than XLA's:
133-167 against 137-149 ms for VGG-Small's 32x32 layer at batch 64, slower on the others.)

Where it applies: only when `jax.default_backend()` is "cpu" at trace time, and only for a
convolution of at least MATMUL_MIN_MACS multiply-adds (the whole batch as traced). Below that
XLA's own gradient was as fast or faster. Measured with benchmarks/conv_gradients.py (2-core AMD
EPYC, 3x3 stride 1, 2026-11-26), forward + both gradients, time with XLA's / with the matrix path:
  batch 64, VGG-Small (32x32), Winograd kernel gradient with separable transforms (12:02 UTC):
    128->128 at 32x32 1.81 (9.7 G MACs), 128->256 at 16x16 2.32 (4.8 G), 256->256 at 16x16
    1.55, 256->512 at 8x8 1.23, 512->512 at 8x8 1.30; with im2col only (09:23 UTC), the same
    layers measured 1.29, 1.17, 1.16, 1.06, 1.14;
  batch 64, the quickstart net (width 1/4, 28x28): 0.62 to 1.40 (0.46 G and less);
  batch 16, VGG-Small, Winograd: 0.83 to 1.31 (up to 2.4 G), im2col: 0.94 to 0.98.
On GPU and TPU
`conv2d` calls `lax.conv_general_dilated` with no custom gradient (cuDNN and the TPU compiler
compute all three at full speed). `conv_general_dilated` has lax's signature, for
`nnx.Conv(conv_general_dilated=...)`; what the matrix path does not cover (dilation, other
dimension orders, a precision or output type) goes to lax unchanged.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnn_jax import winograd
from bnn_jax.errors import InputError

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# The kernel gradient transforms (im2col, Winograd tiles) this many bytes of images at a time (a
# divisor of the batch): small enough to stay in a CPU's L2/L3 cache from written to read.
CHUNK_BYTES = 16 * 2**20
# Smaller convolutions keep XLA's gradient on the CPU too: measured above, the matrix path paid
# off from 4.8 G multiply-adds a call and lost up to 2.4 G.
MATMUL_MIN_MACS = 2**32


def use_matmul_gradients(macs: int | None = None) -> bool:
  """True where `conv2d` computes its gradients as matrix products: on the CPU backend, for a
  convolution of at least MATMUL_MIN_MACS multiply-adds over its batch (any size if None)."""
  return jax.default_backend() == "cpu" and (macs is None or macs >= MATMUL_MIN_MACS)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  strides: int | Sequence[int] = 1,
  padding: str | Sequence[tuple[int, int]] = "SAME",
  feature_group_count: int = 1,
  *,
  matmul_gradients: bool | None = None,
) -> jax.Array:
  """y [N, Ho, Wo, Cout] = conv(x [N, H, W, Cin], kernel [kh, kw, Cin / groups, Cout]).

  `lax.conv_general_dilated` with dimension numbers NHWC/HWIO/NHWC and the same strides, padding
  ("SAME", "VALID" or ((top, bottom), (left, right))) and feature groups: the same bits forward,
  gradients equal to float rounding (see the module docstring for what is tested).
  matmul_gradients: None picks by backend and size (`use_matmul_gradients`); True or False
  forces the custom backward pass or XLA's (tests use True to check the custom one anywhere).
  """
  strides = _pair("strides", strides)
  pads = _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  _check_groups(x.shape[-1], kernel.shape, feature_group_count)
  if matmul_gradients is None:
    matmul_gradients = use_matmul_gradients(_macs(x.shape, kernel.shape, strides, pads))
  if matmul_gradients:
    return _conv(x, kernel, strides, pads, feature_group_count)
  return _xla_conv(x, kernel, strides, pads, feature_group_count)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
  **kwargs,
):
  """`lax.conv_general_dilated` with `conv2d`'s gradients where it applies (CPU, 2-D NHWC/HWIO,
  no dilation, default precision and output type, no batch groups); lax itself otherwise."""
  plain = (
    use_matmul_gradients()
    and lhs.ndim == 4
    and all(d in (None, 1) for d in _flat(lhs_dilation) + _flat(rhs_dilation))
    and _is_nhwc_hwio(lhs.shape, rhs.shape, dimension_numbers)
    and batch_group_count == 1
    and precision is None
    and preferred_element_type is None
    and kwargs.get("out_sharding") is None
    and (isinstance(padding, str) or all(lo >= 0 and hi >= 0 for lo, hi in padding))
  )
  if plain:
    return conv2d(lhs, rhs, tuple(window_strides), padding, feature_group_count)
  args = (lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count)
  return lax.conv_general_dilated(
    lhs, rhs, window_strides, padding, *args, precision, preferred_element_type, **kwargs
  )


# ----------------------------------------------------------------------------- arguments


def _pair(what: str, value) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
    raise InputError(f"conv2d {what} {value!r} is not allowed; give one or two integers >= 1")
  return tuple(int(v) for v in pair)


def _explicit_padding(padding, spatial, window, strides) -> tuple[tuple[int, int], ...]:
  """((top, bottom), (left, right)) from "SAME", "VALID" or explicit non-negative pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise InputError(
        f"conv2d padding {padding!r} is not allowed; give 'SAME', 'VALID' or "
        "((top, bottom), (left, right))"
      )
    return tuple(lax.padtype_to_pads(spatial, window, strides, padding.upper()))
  pads = tuple(tuple(int(v) for v in p) for p in padding)
  if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
    raise InputError(
      f"conv2d padding {padding!r} is not allowed; give 'SAME', 'VALID' or "
      "((top, bottom), (left, right)) with non-negative integers"
    )
  return pads


def _check_groups(in_channels: int, kernel_shape, groups: int) -> None:
  if len(kernel_shape) != 4:
    raise InputError(f"conv2d kernel shape {kernel_shape} is not allowed; give [kh, kw, in, out]")
  if groups < 1 or in_channels != kernel_shape[2] * groups or kernel_shape[3] % groups:
    raise InputError(
      f"conv2d feature_group_count {groups} does not fit input channels {in_channels} and "
      f"kernel {tuple(kernel_shape)}: need in = kernel[2] * groups and kernel[3] % groups == 0"
    )


def _macs(x_shape, kernel_shape, strides, pads) -> int:
  """Multiply-adds of the forward convolution: N * Ho * Wo * kh * kw * (Cin/G) * Cout."""
  out = [(x_shape[1 + i] + sum(pads[i]) - kernel_shape[i]) // strides[i] + 1 for i in range(2)]
  return x_shape[0] * out[0] * out[1] * int(np.prod(kernel_shape))


def _flat(value) -> tuple:
  return (value,) if value is None or isinstance(value, int) else tuple(value)


def _is_nhwc_hwio(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False  # lax's default is NCHW/OIHW
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return dn == lax.conv_dimension_numbers(lhs_shape, rhs_shape, DIMENSION_NUMBERS)


# ----------------------------------------------------------------------------- the convolution


def _xla_conv(x, kernel, strides, pads, groups):
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    dimension_numbers=DIMENSION_NUMBERS,
    feature_group_count=groups,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, pads, groups):
  return _xla_conv(x, kernel, strides, pads, groups)


def _conv_fwd(x, kernel, strides, pads, groups):
  return _xla_conv(x, kernel, strides, pads, groups), (x, kernel)


def _conv_bwd(strides, pads, groups, residuals, g):
  x, kernel = residuals
  g = g.astype(x.dtype)
  dx = _input_grad(g, kernel, x.shape, strides, pads, groups)
  dw = _kernel_grad(x, g, kernel.shape, strides, pads, groups)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _sum_type(dtype):
  """The products' accumulator: float32 for bfloat16 and float32 inputs (bfloat16 sums would
  lose the gradient's small terms), the input's own type when wider (float64 stays float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def _im2col(x, window, strides, pads, out_hw):
  """[N*Ho*Wo, kh*kw, C]: for every output pixel, the input each kernel tap (HWIO order) sees."""
  (sh, sw), (ho, wo) = strides, out_hw
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  n, c = x.shape[0], x.shape[3]
  taps = [
    lax.slice(
      xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1)
    )
    for i in range(window[0])
    for j in range(window[1])
  ]
  return jnp.stack(taps, axis=3).reshape(n * ho * wo, window[0] * window[1], c)


def _chunk_images(n: int, bytes_per_image: int) -> int:
  """The largest divisor of n whose images' transforms fit CHUNK_BYTES (at least 1)."""
  fit = max(1, CHUNK_BYTES // max(1, bytes_per_image))
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= fit)


def _sum_over_chunks(fn, x, g, chunk):
  """sum of fn(x[c], g[c]) over chunks c of `chunk` images, in order: the first chunk's result
  starts the sum (no zero array to fill), a loop adds the others (sliced in place, not copied)."""
  n = x.shape[0]
  if chunk == n:
    return fn(x, g)
  xs = x.reshape(n // chunk, chunk, *x.shape[1:])
  gs = g.reshape(n // chunk, chunk, *g.shape[1:])
  return lax.fori_loop(1, n // chunk, lambda i, total: total + fn(xs[i], gs[i]), fn(xs[0], gs[0]))


def _kernel_grad(x, g, kernel_shape, strides, pads, groups):
  """dL/dkernel [kh, kw, Cin/G, Cout]: Winograd for 3x3 stride-1 float32, im2col otherwise."""
  if winograd.applies(kernel_shape, strides, groups, x.dtype, g.shape[1:3]):
    return _kernel_grad_winograd(x, g, pads)
  return _kernel_grad_im2col(x, g, kernel_shape, strides, pads, groups)


def _kernel_grad_im2col(x, g, kernel_shape, strides, pads, groups):
  """dL/dkernel = im2col(x)^T G, one product G^T [Cout, M] cols [M, kh*kw*Cin] per chunk."""
  kh, kw, cg, cout = kernel_shape
  n, ho, wo, _ = g.shape
  og = cout // groups
  chunk = _chunk_images(n, ho * wo * kh * kw * x.shape[3] * x.dtype.itemsize)

  sums = _sum_type(x.dtype)

  def chunk_grad(xc, gc):  # -> [G, og, kh*kw, cg]
    cols = _im2col(xc, (kh, kw), strides, pads, (ho, wo))
    pixels = (((0,), (0,)), ((), ()))
    if groups == 1:  # a plain matrix product: [og, M] [M, kh*kw*cg]
      gm, cols = gc.reshape(-1, og), cols.reshape(cols.shape[0], -1)
      dw = lax.dot_general(gm, cols, pixels, preferred_element_type=sums)
      return dw.reshape(1, og, kh * kw, cg)
    gm, cols = gc.reshape(-1, groups, og), cols.reshape(cols.shape[0], kh * kw, groups, cg)
    dims = (pixels[0], ((1,), (2,)))  # contract pixels, batch over groups
    return lax.dot_general(gm, cols, dims, preferred_element_type=sums)

  dw = _sum_over_chunks(chunk_grad, x, g, chunk)
  return dw.transpose(2, 3, 0, 1).reshape(kernel_shape)


def _kernel_grad_winograd(x, g, pads):
  """dL/dkernel [3, 3, Cin, Cout] of a 3x3 stride-1 conv by Winograd F(4x4, 3x3).

  The forward pass per tile is Y = A^T [U * V] A (U = G w G^T, V = B^T d B, * summed over Cin), so
  dU = sum over tiles of V^T (A dY A^T): 36 products [Cin, tiles] [tiles, Cout], with 4x fewer
  multiplications than im2col; then dw = G^T dU G. Zero rows and columns pad the output gradient
  to whole tiles (they add nothing) and the input to match.
  """
  n, h, w, cin = x.shape
  _, ho, wo, cout = g.shape
  tile = winograd.TILE
  th, tw = -(-ho // tile), -(-wo // tile)
  (pt, _), (pl, _) = pads
  xp = jnp.pad(x, ((0, 0), (pt, tile * th + 2 - h - pt), (pl, tile * tw + 2 - w - pl), (0, 0)))
  gp = jnp.pad(g, ((0, 0), (0, tile * th - ho), (0, tile * tw - wo), (0, 0)))
  a = tile + 2
  chunk = _chunk_images(n, a * a * th * tw * (cin + cout) * x.dtype.itemsize)

  def chunk_grad(xc, gc):  # -> [36, Cin, Cout]
    v, m = winograd.input_tiles(xc, (th, tw)), winograd.output_grad_tiles(gc)
    dims = (((1,), (1,)), ((0,), (0,)))  # contract tiles, batch over the 36 points
    return lax.dot_general(v, m, dims, preferred_element_type=_sum_type(x.dtype))

  du = _sum_over_chunks(chunk_grad, xp, gp, chunk).reshape(a, a, cin, cout)
  return winograd.kernel_from_tiles(du)


def _input_grad(g, kernel, x_shape, strides, pads, groups):
  """dL/dx [N, H, W, Cin]: G W^T placed at the strides for strided 1x1 kernels, else XLA's."""
  if kernel.shape[:2] == (1, 1) and strides != (1, 1):
    return _input_grad_strided_1x1(g, kernel, x_shape, strides, pads, groups)
  conv = lambda x: _xla_conv(x, kernel, strides, pads, groups)
  (dx,) = jax.linear_transpose(conv, jax.ShapeDtypeStruct(x_shape, g.dtype))(g)
  return dx


def _input_grad_strided_1x1(g, kernel, x_shape, strides, pads, groups):
  """Output pixel (ho, wo) reads input (sh*ho - top, sw*wo - left): G W^T goes back there."""
  n, ho, wo, cout = g.shape
  cg, og = kernel.shape[2], cout // groups
  g3, w = g.reshape(n * ho * wo, groups, og), kernel.reshape(cg, groups, og)
  dims = (((2,), (2,)), ((1,), (1,)))  # contract output channels, batch over groups
  cols = lax.dot_general(g3, w, dims, preferred_element_type=_sum_type(g.dtype))  # [G, M, cg]
  cols = cols.transpose(1, 0, 2).reshape(n, ho, wo, groups * cg).astype(g.dtype)
  # Interior padding spreads the rows/columns to the stride; negative edges drop the padding.
  (pt, _), (pl, _) = pads
  rows = (-pt, x_shape[1] + pt - strides[0] * (ho - 1) - 1, strides[0] - 1)
  columns = (-pl, x_shape[2] + pl - strides[1] * (wo - 1) - 1, strides[1] - 1)
  return lax.pad(cols, jnp.zeros((), cols.dtype), ((0, 0, 0), rows, columns, (0, 0, 0)))
