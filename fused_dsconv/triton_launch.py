"""Launchers of the Triton kernels (the counterpart of csrc/kernels/launch.cuh): kernels -> launchers -> backend.

A launcher allocates outputs and workspaces, sizes the grid, picks the dot mode, and owns the BN
coefficient tables; the kernels are in ``fused_dsconv/triton_kernels.py`` (looked up on every call, so a
test can re-import them under ``TRITON_INTERPRET=1``), the backend (``fused_dsconv/backends/triton.py``)
composes the launchers into the contract's four primitives.

Stages (the names the CUDA kernels share):

- forward: ``launch_conv`` (dsconv_fwd: y or relu(y), and per-group statistics), ``launch_bn_stats``
  (bn_stats: mean, var and bn_relu's coefficients), ``launch_bn_relu`` (bn_relu);
- backward: ``launch_bn_backward`` (bn_coef, bn_bwd_reduce, bn_bwd_finalize: dbias, dgamma, dbeta and
  dy's coefficients), ``launch_conv_backward`` (dsconv_bwd_dt: dt and dWp; dsconv_bwd_dx: dx and dWd;
  colsum for the weight-gradient partials).

What a launcher hands a kernel: activations with their strides; weights, per-channel vectors and the
workspaces it allocates as dense row-major arrays, which it guarantees (``_dense``) rather than
assumes: a view whose strides differ (a [K] slice of a wider tensor, a transposed weight) would
otherwise be read at the wrong addresses.

Tile configs. The three heavy kernels are ``triton.autotune``-d (config spaces and pruning in the
kernels module); everything the grid or a workspace depends on is either fixed here (pixel groups, the
backward's K slice) or read back from the chosen config, so any config gives the same results up to
summation order. ``tuned_configs()`` lists what the tuner chose in this process;
``FUSED_DSCONV_TRITON_VERBOSE=1`` prints each choice as it is made (``fused-dsconv info --verbose`` shows
the config spaces and the candidates per block of the classifier).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch
import triton

_KERNELS = "fused_dsconv.triton_kernels"
VERBOSE = os.environ.get("FUSED_DSCONV_TRITON_VERBOSE", "0") not in ("", "0")


def kernels():
    """The kernels module as it is imported now (compiled, or interpreted under TRITON_INTERPRET=1)."""
    return importlib.import_module(_KERNELS)


# ----------------------------------------------------------------------------------------------
# Dot precision
# ----------------------------------------------------------------------------------------------

def conv_tf32_enabled() -> bool:
    """Whether PyTorch lets cuDNN convolutions use TF32: ``torch.backends.cudnn.conv.fp32_precision``
    (torch >= 2.9, which the legacy ``torch.backends.cudnn.allow_tf32`` sets too), else ``allow_tf32``."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(cudnn.allow_tf32)


def dot_mode(x: torch.Tensor) -> int:
    """DOT_MODE (kernels module docstring) for inputs like ``x``: TF32 for float32 exactly when PyTorch's
    convolutions use it (and the GPU has TF32 tensor cores, sm_80+), IEEE otherwise."""
    interp = kernels().INTERPRETED
    if x.dtype == torch.float32:
        if not conv_tf32_enabled():
            return 0
        if interp:
            return 4
        return 3 if torch.cuda.get_device_capability(x.device)[0] >= 8 else 0
    if x.dtype == torch.bfloat16 and interp:
        return 2
    return 1


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _span(t: torch.Tensor) -> int:
    """Elements from t's first to one past its last addressable element (the bound DEBUG asserts)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def _dense(t):
    """``t`` as the dense row-major array a kernel indexes without strides; no copy when it already is one."""
    return None if t is None else t.contiguous()


def _layout(t: torch.Tensor) -> int:
    return int(t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last))


def plane_vec(plane: int, *tensors) -> int:
    """VEC of the kernels' ``_pixels``: the largest of 8, 4, 2 dividing the plane size (H W of the pixels
    indexed) when every tensor has dense planes -- offset n sn + h W + w, so NCHW-contiguous, not
    channels_last -- else 1 (general strides). Pixels then sit contiguously in aligned groups of VEC and
    the kernels' loads and stores along pixels vectorise."""
    for t in tensors:
        _, _, h, w = t.shape
        if (w > 1 and t.stride(3) != 1) or (h > 1 and t.stride(2) != w):
            return 1
    return next((v for v in (8, 4, 2) if plane % v == 0), 1)


def _m_class(m: int) -> int:
    """Autotuner key for the pixel count: its power-of-two bucket (a new batch size of the same class
    reuses the choice; a last, smaller batch may tune once more)."""
    return max(1, m).bit_length()


def output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _check_pixels(count: int, what: str) -> None:
    # Pixel indices are int32 inside the kernels (offsets are int64), and a group's end, start + group
    # size, must fit too: 2**30 pixels would be >= 4 GiB per channel of fp32 activations, far beyond any
    # joint block, but say so rather than wrap around.
    if 2 * count + 4 * kernels().PIX_ALIGN >= 2 ** 31:
        raise ValueError(f"fused_dsconv triton backend: {what} = {count} pixels exceeds the int32 pixel index "
                         f"(at most {2 ** 30 - 2 * kernels().PIX_ALIGN})")


def _pix_groups(total: int, programs_per_group: int, device: torch.device) -> tuple[int, int]:
    """(pixels per group, groups) for the kernels whose programs walk a group of pixel tiles.

    Groups are multiples of PIX_ALIGN (so of every config's BLOCK_P) and few enough that the partials
    they write stay small: about 4 programs per SM in all. Under the interpreter: PIX_ALIGN pixels,
    which with the interpreter's 32-pixel tiles walks 4 tiles and, on the test shapes, leaves a tail.
    """
    align = kernels().PIX_ALIGN
    if kernels().INTERPRETED or device.type != "cuda":
        per = align
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        groups = max(1, min(triton.cdiv(total, align), triton.cdiv(4 * sms, max(1, programs_per_group))))
        per = triton.cdiv(triton.cdiv(total, groups), align) * align
    return per, max(1, triton.cdiv(total, per))


def _ew_opts() -> dict:
    return {} if kernels().INTERPRETED else {"num_warps": 8, "num_stages": 1}


def ew_config():
    """(BLOCK_P, BLOCK_K) of the elementwise / reduction tiles (bn_relu, bn_bwd_reduce)."""
    return (32, 16) if kernels().INTERPRETED else (64, 64)


def colsum_config():
    """(BLOCK_R, BLOCK_N) of colsum_kernel."""
    return (16, 32) if kernels().INTERPRETED else (32, 128)


def reduce_config():
    """(BLOCK_T, BLOCK_K) of bn_stats / bn_bwd_finalize (a few hundred partial rows at most)."""
    return (16, 16) if kernels().INTERPRETED else (32, 64)


#: Widest K slice of dsconv_bwd_dt per dot kind (``triton_kernels.KINDS``; see ``k_slice``).
K_SLICE_CAP = {"mma16": 256, "tf32": 128, "fma32": 128, "fma16": 128}


def _arch(x: torch.Tensor):
    """x's GPU as 75 / 80 / ... (None for CPU tensors: the interpreter, taken as sm_80+)."""
    if x.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def kind_of(x: torch.Tensor, mode=None) -> str:
    """The dot kind (``triton_kernels.KINDS``) of a launch on inputs like ``x``: its DOT_MODE (None: a kernel
    without a dot), operand size and GPU."""
    return kernels().dot_kind(x.element_size(), mode, _arch(x))


def k_slice(k: int, kind: str) -> int:
    """BLOCK_K of dsconv_bwd_dt: the output channels one program holds (dy tile and dWp accumulator).
    All of K up to 256 for 16-bit tensor-core operands, 128 otherwise (float32 operands take twice the
    registers; FMA dots hold their operands in registers): wider layers run K / BLOCK_K slices whose dt
    partials dsconv_bwd_dx adds. The caps are where the compile report shows no spills."""
    return min(K_SLICE_CAP[kind], max(16, triton.next_power_of_2(k)))


# ----------------------------------------------------------------------------------------------
# Autotuned launches: forcing a config, and what was chosen
# ----------------------------------------------------------------------------------------------

TUNED = ("dsconv_fwd", "dsconv_bwd_dt", "dsconv_bwd_dx")


def tuned_kernel(name: str):
    """The ``triton.autotune`` object of a tuned kernel (``name`` in TUNED)."""
    return getattr(kernels(), name + "_kernel")


def configs(name: str) -> list:
    """The config space of a tuned kernel."""
    return list(tuned_kernel(name).configs)


@contextlib.contextmanager
def forced_config(name: str, config):
    """Run ``config`` for every launch of kernel ``name`` inside the block, untimed (tests, debugging).
    The tuner's choices for that kernel are dropped on entry and exit (they were made for other configs)."""
    tk = kernels()
    if name not in TUNED:
        raise ValueError(f"forced_config: name must be one of {TUNED}, got {name!r}")
    kern = tuned_kernel(name)
    prev = tk.FORCED.get(name)
    tk.FORCED[name] = config
    kern.cache.clear()
    try:
        yield
    finally:
        if prev is None:
            tk.FORCED.pop(name, None)
        else:
            tk.FORCED[name] = prev
        kern.cache.clear()


def _config_str(cfg) -> str:
    tiles = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{tiles} num_warps={cfg.num_warps} num_stages={cfg.num_stages}"


def tuned_configs() -> list[dict]:
    """What the autotuner chose in this process: one dict per (kernel, problem class)."""
    if _KERNELS not in sys.modules:
        return []
    out = []
    for name in TUNED:
        kern = tuned_kernel(name)
        for key, cfg in kern.cache.items():
            named = dict(zip(kern.keys, key))
            named["dtypes"] = ",".join(str(v)[6:] for v in key[len(kern.keys):])
            out.append(dict(kernel=name, key=named, config=_config_str(cfg)))
    return out


def _launch_tuned(name: str, grid, *args, **kwargs):
    """Launch a tuned kernel; returns the config that ran. Prints new choices when VERBOSE."""
    kern = tuned_kernel(name)
    before = len(kern.cache)
    kern[grid](*args, **kwargs)
    cfg = kern.best_config
    if VERBOSE and len(kern.cache) > before:
        key = {k: kwargs.get(k, args[kern.arg_names.index(k)] if kern.arg_names.index(k) < len(args) else None)
               for k in kern.keys}
        timed = getattr(kern, "configs_timings", None)
        note = f" (fastest of {len(timed)}, tuned in {getattr(kern, 'bench_time', 0.0):.2f} s)" if timed else ""
        print(f"fused_dsconv triton: {name} {key} -> {_config_str(cfg)}{note}", file=sys.stderr)
    return cfg


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

def launch_conv(x, dw_weight, pw_weight, bias, stride, dilation, out, *, relu, stats, wrap=False,
                _drop_bounds=False):
    """dsconv_fwd into ``out`` (any strides). Returns the statistics partials when ``stats``: ``(ws, rows,
    pixels per row)``, ws [2, rows allocated, K] of which the first ``rows`` hold one pixel tile each;
    else None.

    ``wrap``: launch through ``torch.library.wrap_triton`` (inside a ``triton_op``: fused_dsconv/triton_ops.py),
    which lets torch.compile trace the launch.
    """
    tk = kernels()
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m = n * ho * wo
    _check_pixels(m, "N*Ho*Wo")
    dw_weight, pw_weight, bias = _dense(dw_weight), _dense(pw_weight), _dense(bias)
    # Statistics partials per pixel tile: room for the smallest tile of the space; the chosen config's
    # BLOCK_P, read back after the launch, says how many rows it wrote.
    rows_alloc = triton.cdiv(m, min(cfg.kwargs["BLOCK_P"] for cfg in tk.FWD_CONFIGS)) if stats else 0
    ws = torch.empty((2, rows_alloc, k), device=x.device, dtype=torch.float32) if stats else out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_P"]) * triton.cdiv(k, meta["BLOCK_K"]),)
    args = (x, dw_weight, pw_weight, bias if bias is not None else out, out, ws,
            c, k, h, w, wo, ho * wo, m, dilation, rows_alloc * k, _m_class(m), _layout(x),
            *_strides(x), *_strides(out), _span(x), _span(out))
    vec = plane_vec(ho * wo, out, *((x,) if stride == 1 else ()))
    consts = dict(STRIDE=stride, HAS_BIAS=bias is not None, RELU=relu, STATS=stats, DOT_MODE=dot_mode(x), VEC=vec,
                  DEBUG=tk.DEBUG, DROP_BOUNDS=_drop_bounds)
    if wrap:
        torch.library.wrap_triton(tk.dsconv_fwd_kernel)[grid](*args, **consts)
        return None
    cfg = _launch_tuned("dsconv_fwd", grid, *args, **consts)
    if not stats:
        return None
    block_p = cfg.kwargs["BLOCK_P"]
    return ws, triton.cdiv(m, block_p), block_p


#: Rows (pixel tiles) bn_stats merges per program in its first level; None: 4 BLOCK_T (tests lower it).
STATS_CHUNK_ROWS = None


def launch_bn_stats(partials, m, bn_weight, bn_bias, eps):
    """(mean, biased var, coef [3, K]) from dsconv_fwd's statistics partials; coef rows are bn_relu's
    (mean, a = gamma / sqrt(var + eps), beta). Two levels: chunks of CHUNK rows in parallel, then one
    merge of the chunks (a single serial merge of every tile's row would take one program per 64
    channels through up to M / 32 rows)."""
    tk = kernels()
    ws, rows, per_row = partials
    k = ws.shape[2]
    dev = ws.device
    mean = torch.empty(k, device=dev, dtype=torch.float32)
    var = torch.empty_like(mean)
    coef = torch.empty((3, k), device=dev, dtype=torch.float32)
    affine = bn_weight is not None
    gam = _dense(bn_weight) if affine else mean
    bet = _dense(bn_bias) if affine else mean
    bt, bk = reduce_config()
    chunk = STATS_CHUNK_ROWS or 4 * bt
    if rows > chunk:
        chunks = triton.cdiv(rows, chunk)
        mid = torch.empty((2, chunks, k), device=dev, dtype=torch.float32)
        tk.bn_stats_kernel[(triton.cdiv(k, bk), chunks)](
            ws, mid, mean, var, gam, bet, coef, rows, ws.shape[1], k, m, per_row, chunk, eps,
            FINAL=False, HAS_AFFINE=affine, BLOCK_T=bt, BLOCK_K=bk)
        ws, rows, per_row = mid, chunks, per_row * chunk
    tk.bn_stats_kernel[(triton.cdiv(k, bk), 1)](
        ws, ws, mean, var, gam, bet, coef, rows, ws.shape[1], k, m, per_row, rows, eps,
        FINAL=True, HAS_AFFINE=affine, BLOCK_T=bt, BLOCK_K=bk)
    return mean, var, coef


def launch_bn_coef(mean, var, bn_weight, bn_bias, eps, rows=3):
    """A [rows, K] coefficient table whose rows 0..2 (mean, a = gamma r, beta) bn_coef fills from the given
    statistics; rows beyond (dy's, in the backward) are left for the caller."""
    k = mean.shape[0]
    bkc = reduce_config()[1]
    mean, var = _dense(mean), _dense(var)
    affine = bn_weight is not None
    coef = torch.empty((rows, k), device=mean.device, dtype=torch.float32)
    kernels().bn_coef_kernel[(triton.cdiv(k, bkc),)](
        mean, var, _dense(bn_weight) if affine else mean, _dense(bn_bias) if affine else mean, coef, k, eps,
        HAS_AFFINE=affine, BLOCK_K=bkc)
    return coef


def launch_bn_relu(y, out, coef):
    """out = relu(BN(y)) from bn_stats' coefficients; ``out`` may be ``y`` (in place)."""
    tk = kernels()
    n, k, ho, wo = y.shape
    m = n * ho * wo
    bp, bk = ew_config()
    grid = (triton.cdiv(m, bp), triton.cdiv(k, bk))
    tk.bn_relu_kernel[grid](y, out, _dense(coef), k, wo, ho * wo, m, *_strides(y), *_strides(out), _span(y),
                            _span(out), BLOCK_P=bp, BLOCK_K=bk, VEC=plane_vec(ho * wo, y, out), DEBUG=tk.DEBUG,
                            **_ew_opts())


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------

def launch_colsum(ws2d):
    """Fixed-order column sums of an [R, NCOL] fp32 workspace or a view of one (read through its strides)."""
    r, ncol = ws2d.shape
    out = torch.empty(ncol, device=ws2d.device, dtype=torch.float32)
    br, bn = colsum_config()
    kernels().colsum_kernel[(triton.cdiv(ncol, bn),)](ws2d, out, r, ncol, *_strides(ws2d), BLOCK_R=br, BLOCK_N=bn)
    return out


def launch_bn_backward(grad_out, y, mean, var, bn_weight, bn_bias, eps, train):
    """The BN / ReLU part of the backward: (coef, dbias, dgamma, dbeta).

    train: ``y`` is the pre-BN output; coef [5, K] holds dy's per-channel coefficients (rows mean,
    a = gamma r, beta, c1, rc2: see the kernels' ``_dy_tile``); dgamma / dbeta are the BN parameters'
    gradients. eval: ``y`` is the block's output, coef is a placeholder (eval's dy needs none),
    dgamma = dbeta = None.
    """
    tk = kernels()
    n, k, ho, wo = y.shape
    m = n * ho * wo
    dev = y.device
    affine = bn_weight is not None
    bt, bkc = reduce_config()
    if train:
        mean, var = _dense(mean), _dense(var)
        gam = _dense(bn_weight) if affine else mean
        coef = launch_bn_coef(mean, var, bn_weight, bn_bias, eps, rows=5)
    else:
        gam = var = coef = torch.empty(1, device=dev, dtype=torch.float32)
    bp, bk = ew_config()
    per, groups = _pix_groups(m, triton.cdiv(k, bk), dev)
    ws = torch.empty((3 if train else 1, groups, k), device=dev, dtype=torch.float32)
    tk.bn_bwd_reduce_kernel[(groups, triton.cdiv(k, bk))](
        grad_out, y, coef, ws, k, wo, ho * wo, m, per, *_strides(grad_out), *_strides(y),
        _span(grad_out), _span(y), TRAIN=train, BLOCK_P=bp, BLOCK_K=bk, VEC=plane_vec(ho * wo, grad_out, y),
        DEBUG=tk.DEBUG, **_ew_opts())
    # Separate storages: op outputs may not alias.
    dbias = torch.empty(k, device=dev, dtype=torch.float32)
    dgamma = torch.empty(k, device=dev, dtype=torch.float32) if train else dbias
    dbeta = torch.empty(k, device=dev, dtype=torch.float32) if train else dbias
    tk.bn_bwd_finalize_kernel[(triton.cdiv(k, bkc),)](
        ws, var, gam, coef, dbias, dgamma, dbeta, groups, k, m, eps,
        TRAIN=train, HAS_AFFINE=affine, BLOCK_T=bt, BLOCK_K=bkc)
    return (coef, dbias, dgamma, dbeta) if train else (coef, dbias, None, None)


def launch_conv_backward(grad_out, y, coef, x, dw_weight, pw_weight, stride, dilation, train):
    """(dx, dWd, dWp) given dy = f(grad_out, y, coef) (the kernels' ``_dy_tile``)."""
    tk = kernels()
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m, mi = n * ho * wo, n * h * w
    _check_pixels(mi, "N*H*W")
    _check_pixels(m, "N*Ho*Wo")
    coef, dw_weight, pw_weight = _dense(coef), _dense(dw_weight), _dense(pw_weight)
    mf = torch.channels_last if _layout(x) else torch.contiguous_format
    dev, mcls, lay = x.device, _m_class(m), _layout(x)

    # dt (fp32, x's layout; one slice per K slice) and the pointwise weight-gradient partials.
    mode = dot_mode(x)
    bk = k_slice(k, kind_of(x, mode))
    slices = triton.cdiv(k, bk)
    dt = torch.empty((slices * n, c, ho, wo), device=dev, dtype=torch.float32, memory_format=mf)
    dt_slice = n * c * ho * wo
    min_bc = min(cfg.kwargs["BLOCK_C"] for cfg in tk.DT_CONFIGS)
    per, groups = _pix_groups(m, triton.cdiv(c, 2 * min_bc) * slices, dev)
    ws_pw = torch.empty((groups, k * c), device=dev, dtype=torch.float32)
    _launch_tuned(
        "dsconv_bwd_dt", lambda meta: (triton.cdiv(c, meta["BLOCK_C"]) * slices * groups,),
        grad_out, y, coef, x, dw_weight, pw_weight, dt, ws_pw,
        c, k, h, w, wo, ho * wo, m, dilation, per, slices, dt_slice, mcls, lay,
        *_strides(grad_out), *_strides(y), *_strides(x), *_strides(dt),
        _span(grad_out), _span(y), _span(x), _span(dt),
        STRIDE=stride, TRAIN=train, DOT_MODE=mode, DEBUG=tk.DEBUG, BLOCK_K=bk,
        VEC=plane_vec(ho * wo, grad_out, y, dt, *((x,) if stride == 1 else ())))
    d_pw = launch_colsum(ws_pw).reshape(k, c).to(pw_weight.dtype)

    # dx and the depthwise weight-gradient partials.
    dx = torch.empty_like(x, memory_format=mf)
    min_bc = min(cfg.kwargs["BLOCK_C"] for cfg in tk.DX_CONFIGS)
    per, groups = _pix_groups(mi, triton.cdiv(c, 2 * min_bc), dev)
    ws_dw = torch.empty((groups, c * 9), device=dev, dtype=torch.float32)
    _launch_tuned(
        "dsconv_bwd_dx", lambda meta: (triton.cdiv(c, meta["BLOCK_C"]) * groups,),
        dt, dw_weight, x, dx, ws_dw, c, h, w, ho, wo, h * w, mi, dilation, per, slices, dt_slice, mcls, lay,
        *_strides(dt), *_strides(x), *_strides(dx), _span(dt), _span(x), _span(dx),
        STRIDE=stride, VEC=plane_vec(h * w, x, dx), DEBUG=tk.DEBUG)
    d_dw = launch_colsum(ws_dw).reshape(c, 1, 3, 3).to(dw_weight.dtype)
    return dx, d_dw, d_pw


def explain_configs(n: int, c: int, k: int, h: int, w: int, stride: int, dtype: torch.dtype = torch.float16,
                    arch: int = 86, tf32: bool = False) -> dict[str, list[str]]:
    """The candidate configs each tuned kernel would time for one layer (after pruning) on a GPU of compute
    capability ``arch`` (86: sm_86); no GPU needed."""
    tk = kernels()
    ho, wo = output_size(h, stride), output_size(w, stride)
    named = dict(C=c, K=k, M=n * ho * wo, MI=n * h * w, HWo=ho * wo, HW=h * w)
    size = torch.empty((), dtype=dtype).element_size()
    mode = (3 if tf32 else 0) if dtype == torch.float32 else 1
    out = {}
    for name in TUNED:
        kind = tk.dot_kind(size, None if name == "dsconv_bwd_dx" else mode, arch)
        out[name] = [_config_str(cfg) for cfg in tk.candidates(
            configs(name), tk.LIMITS[name](named), kind, k_slice(k, kind) if name == "dsconv_bwd_dt" else None)]
    return out


def describe() -> str:
    """For ``fused-dsconv info --verbose``: the autotuner's config spaces, the candidates it would time for
    each block of the default classifier (batch 32, float16 and float32), and what it chose in this process."""
    from .models import BASE_RESOLUTION, TABLE1
    tk = kernels()
    blocks, h = [], BASE_RESOLUTION  # the default classifier's nine joint blocks (alpha 1)
    for i, (c, k, s) in enumerate(TABLE1):
        blocks.append((f"b{i + 1}", c, k, h, s))
        h = output_size(h, s)
    lines = [f"Triton autotuning: {'on' if tk.AUTOTUNE else 'off (FUSED_DSCONV_TRITON_AUTOTUNE=0)'}; "
             f"FUSED_DSCONV_TRITON_VERBOSE=1 prints each choice; at most {tk.MAX_CANDIDATES} candidates per class"]
    for name in TUNED:
        lines.append(f"  {name} space:")
        for cfg in configs(name):
            kinds, max_k = tk.SCOPE.get(cfg, (tk.ALL, None))
            scope = f" (for {', '.join(k for k in tk.KINDS if k in kinds)}"
            scope += f"; K slice <= {max_k})" if max_k else ")"
            lines.append(f"    {_config_str(cfg)}{scope}")
    for dtype, tf32 in ((torch.float16, False), (torch.float32, True), (torch.float32, False)):
        what = str(dtype)[6:] + (" TF32" if tf32 else " IEEE" if dtype == torch.float32 else "")
        lines.append(f"  candidates per block (batch 32, {what}, sm_86):")
        kind = tk.dot_kind(dtype.itemsize, (3 if tf32 else 0) if dtype == torch.float32 else 1, 86)
        for name, c, k, h, s in blocks:
            table = explain_configs(32, c, k, h, h, s, dtype, tf32=tf32)
            counts = "; ".join(f"{kern[7:]} {len(v)}" for kern, v in table.items())
            lines.append(f"    {name} C={c} K={k} {h}x{h} s{s}: {counts}; K slice {k_slice(k, kind)}")
    chosen = tuned_configs()
    lines.append(f"  chosen in this process: {len(chosen) or 'none yet (tuning happens at the first launch)'}")
    for row in chosen:
        lines.append(f"    {row['kernel']} {row['key']} -> {row['config']}")
    return "\n".join(lines)
