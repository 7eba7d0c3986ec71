"""Ahead-of-time compile report of the Triton kernels: registers, shared memory, spills, occupancy.

No GPU needed. The launchers (fused_dsconv/triton_launch.py, triton_launch_backward.py) are run on ``meta`` tensors of a few
representative layers with every kernel launch recorded instead of made; each recorded launch is then
specialised exactly as Triton's runtime would specialise it (its own binder: integers equal to 1 become
constexprs, multiples of 16 and 16-byte aligned pointers get divisibility hints) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``. An autotuned kernel is compiled
once per config of its space. ptxas (the one Triton ships) assembles the PTX; its ``-v`` output gives
registers and spill bytes. Shared memory is Triton's dynamic allocation (``metadata.shared``).
Occupancy is theoretical: resident warps per SM allowed by registers, shared memory, warps and blocks
per SM, over the SM's maximum.

    python tools/report_triton.py [--archs 75,80,86,89] [--out docs/triton_compile_report.md]
                                  [--update docs/compile_report.md]
    rows() -> list[dict]                      # for tools/compile_report.py

The kernels are loaded as a private copy of fused_dsconv/triton_kernels/ decorated for compilation,
whatever TRITON_INTERPRET says (the interpreter's kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS_DIR = ROOT / "fused_dsconv" / "triton_kernels"
ARCHS = (75, 80, 86, 89)

# Per-SM limits (CUDA C Programming Guide, "Compute capabilities" table): max resident warps, max resident
# blocks, shared memory per SM usable by blocks (bytes), shared memory the driver reserves per block.
SM_LIMITS = {
    75: dict(warps=32, blocks=16, smem=64 * 1024, reserved=0),
    80: dict(warps=64, blocks=32, smem=164 * 1024, reserved=1024),
    86: dict(warps=48, blocks=16, smem=100 * 1024, reserved=1024),
    89: dict(warps=48, blocks=24, smem=100 * 1024, reserved=1024),
}
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

# Representative layers: (label, N, C, K, H, W, stride, channels_last) -- the classifier's b2 (C = 64: dt builds
# dy itself, below triton_setup.DY_STORE_MIN_C), b3 (NCHW), b4 (stride 2) and b7 (channels_last, K = 512: two
# K slices in dsconv_bwd_dt) at batch 32, and b9's K = 1024
# (four fp16 slices, eight fp32). The integer arguments that change a kernel's specialisation (== 1,
# multiple of 16) follow from these.
LAYERS = {
    "b2": (32, 64, 128, 112, 112, 2, False),
    "b3": (32, 128, 128, 56, 56, 1, False),
    "b4": (32, 128, 256, 56, 56, 2, False),
    "b7cl": (32, 512, 512, 14, 14, 1, True),
}
# (dtype, tf32): float32 IEEE and TF32, float16, bfloat16; and the layers each runs.
MODES = (
    ("float32", False, ("b3",)),
    ("float32", True, ("b3",)),
    ("float16", False, ("b2", "b3", "b4", "b7cl")),
    ("bfloat16", False, ("b3",)),
)

_TK: dict = {}
#: Exploring a config space: compile every config of it for every launch, in scope or not.
EXPLORE = False


def kernels(interpret: bool = False):
    """fused_dsconv/triton_kernels/ loaded for compilation (TRITON_INTERPRET off while it is decorated), or,
    with ``interpret``, a private copy for the interpreter (TRITON_INTERPRET on), whatever the environment."""
    name = "fused_dsconv._triton_kernels_" + ("interp" if interpret else "aot")
    if name not in _TK:
        saved = os.environ.pop("TRITON_INTERPRET", None)
        if interpret:
            os.environ["TRITON_INTERPRET"] = "1"
        try:
            spec = importlib.util.spec_from_file_location(
                name, KERNELS_DIR / "__init__.py", submodule_search_locations=[str(KERNELS_DIR)]
            )
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        finally:
            os.environ.pop("TRITON_INTERPRET", None)
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
        _TK[name] = mod
    return _TK[name]


def _ptxas() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path.exists() else "ptxas"


def occupancy(arch: int, regs: int, shared: int, num_warps: int) -> float:
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    blocks = min(lim["blocks"], lim["warps"] // num_warps, (REGS_PER_SM // regs_per_warp) // num_warps)
    if shared:
        blocks = min(blocks, lim["smem"] // (shared + lim["reserved"]))
    return blocks * num_warps / lim["warps"]


def _jit(fn):
    import triton

    while not isinstance(fn, triton.runtime.JITFunction):  # unwrap triton.autotune
        fn = fn.fn
    return fn


# ----------------------------------------------------------------------------------------------
# Recording the launches the launchers make
# ----------------------------------------------------------------------------------------------


class _Recorder:
    """Stands in for a kernel (or an autotuned kernel): ``kernel[grid](*args, **kwargs)`` is recorded."""

    def __init__(self, name, real, log):
        self.name, self.real, self.log = name, real, log
        self.fn = _jit(real)
        self.configs = getattr(real, "configs", None)
        self.best_config = self.configs[0] if self.configs else None
        self.cache, self.keys, self.arg_names = {}, getattr(real, "keys", []), self.fn.arg_names

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.name, args, kwargs, self._frozen(grid, args, kwargs)))

    def _frozen(self, grid, args, kwargs):
        """The grid as the launch computes it now, per config: a launcher's grid lambda reads variables of
        its enclosing function, which later launches of the same function may rebind."""
        if not callable(grid):
            return grid
        meta = {**dict(zip(self.arg_names, args)), **kwargs}
        table = {}
        for cfg in self.configs or [None]:
            c = cfg.kwargs if cfg is not None else {}
            table[tuple(sorted(c.items()))] = tuple(grid({**meta, **c}))
        return lambda m: table[tuple(sorted((k, m[k]) for k in dict(next(iter(table)))))]


@contextlib.contextmanager
def _recording(arch: int, log: list, sms: int | None = None):
    """The launchers, run against recorders of the AOT kernels, on a GPU of compute capability ``arch``
    (with ``sms`` multiprocessors: the launchers size pixel groups by them; None: as off a GPU)."""
    import torch

    sys.path.insert(0, str(ROOT))
    import fused_dsconv.triton_launch as launch
    import fused_dsconv.triton_launch_backward as launch_backward

    aot = kernels()
    fake = types.SimpleNamespace(**{k: getattr(aot, k) for k in dir(aot) if not k.startswith("__")})
    for k in dir(aot):
        if k.endswith("_kernel"):
            setattr(fake, k, _Recorder(k, getattr(aot, k), log))
    fake.INTERPRETED, fake.DEBUG = False, False
    import fused_dsconv.triton_setup as setup

    saved = (setup.kernels, setup.arch_of, torch.cuda.get_device_capability, torch.cuda.get_device_properties)
    saved_groups = launch_backward.pix_groups  # the backward launchers walk pixel groups
    setup.kernels = lambda: fake
    setup.arch_of = lambda x: arch  # the meta tensors stand for tensors on this GPU
    torch.cuda.get_device_capability = lambda *a, **k: (arch // 10, arch % 10)
    if sms is not None:  # pix_groups' GPU branch, for a GPU of this size
        torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(multi_processor_count=sms)
        launch_backward.pix_groups = lambda total, per, device: saved_groups(total, per, torch.device("cuda", 0))
    try:
        yield launch
    finally:
        setup.kernels, setup.arch_of, torch.cuda.get_device_capability, torch.cuda.get_device_properties = saved
        launch_backward.pix_groups = saved_groups


OPS = ("eval", "train", "backward", "apply", "recompute", "backward_eval")


def _primitives(launch, layer, dtype: str, tf32: bool, ops=OPS):
    """Every launch of the four primitives (and, in float16, recompute mode; the split statistics' apply
    pass) for one layer (a label of LAYERS, or its tuple), through the backend; ``ops``: only these."""
    import torch
    from fused_dsconv import testing
    from fused_dsconv.backends import triton as backend_mod
    from fused_dsconv.contract import OpParams

    n, c, k, h, w, s, cl = LAYERS[layer] if isinstance(layer, str) else layer
    dt = getattr(torch, dtype)
    meta = dict(device="meta")
    mf = torch.channels_last if cl else torch.contiguous_format
    x = torch.empty((n, c, h, w), dtype=dt, **meta).contiguous(memory_format=mf)
    wd, wp = torch.empty((c, 1, 3, 3), dtype=dt, **meta), torch.empty((k, c), dtype=dt, **meta)
    vec = [torch.empty(k, **meta) for _ in range(5)]
    bias, gamma, beta, mean, var = vec
    b = backend_mod.TritonBackend()
    saved = backend_mod._launch
    backend_mod._launch = lambda backward=False: sys.modules[launch.__name__ + ("_backward" if backward else "")]
    try:
        with testing.conv_tf32(tf32):
            p = OpParams(s, 3, 1e-5, True)
            out = torch.empty((n, k, (h - 1) // s + 1, (w - 1) // s + 1), dtype=dt, **meta).contiguous(memory_format=mf)
            y = out
            if "eval" in ops:
                b.forward_eval(x, wd, wp, bias, p)
            if "train" in ops:
                _, y, _, _ = b.forward_train(x, wd, wp, bias, gamma, beta, p)
            if "backward" in ops:
                b.backward_train(out, x, wd, wp, bias, gamma, beta, y, mean, var, p)
            if "apply" in ops:  # the split statistics' second backward pass: dy's rows from merged means
                b.backward_apply(out, x, wd, wp, y, mean, var, gamma, beta, mean, var, p)
            if "recompute" in ops and dtype == "float16":  # recompute mode's y-only forward (no bias)
                b.backward_train(out, x, wd, wp, None, gamma, beta, None, mean, var, p)
            if "backward_eval" in ops:
                b.backward_eval(out, out, x, wd, wp, p)
    finally:
        backend_mod._launch = saved


def _summary(constexprs: dict) -> str:
    keep = [
        f"{k}={int(v) if isinstance(v, bool) else v}"
        for k, v in constexprs.items()
        if k not in ("DEBUG", "DROP_BOUNDS") and not k.startswith("BLOCK") and v is not None
    ]
    return " ".join(keep)


def configs(name: str, args, kwargs, arch: int, pruned: bool = False) -> list:
    """The configs of a tuned kernel's space that this launch can run on ``arch`` ([None]: not tuned);
    ``pruned``: only those the autotuner would time for it (no tile wider than the problem)."""
    tk = kernels()
    real = getattr(tk, name)
    if not getattr(real, "configs", None):
        return [None]
    named = dict(zip(_jit(real).arg_names, args))
    kind = tk.dot_kind(named["x_ptr"].element_size(), kwargs.get("DOT_MODE"), arch)
    if pruned:
        return tk.candidates(
            real.configs, tk.LIMITS[name.removesuffix("_kernel")]({**named, **kwargs}), kind, kwargs.get("BLOCK_K")
        )
    return [c for c in real.configs if EXPLORE or tk.in_scope(c, kind, kwargs.get("BLOCK_K"))]


def specialise(name: str, args, kwargs, cfg, backend):
    """(options, signature, constexprs, attributes) of a launch with ``cfg``, as Triton's runtime binds it."""
    from triton.runtime.jit import create_function_from_signature

    fn = _jit(getattr(kernels(), name))
    kw = dict(kwargs)
    if cfg is not None:
        kw.update(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    opts_kw = {o: kw.pop(o) for o in ("num_warps", "num_stages") if o in kw}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kw, **opts_kw)
    return fn._pack_args(backend, opts_kw, bound, spec, opts)


def variants(archs=ARCHS, modes=MODES, debug_variant=True):
    """[(kernel, label, arch, ASTSource args, options)] for every distinct compile the launches need,
    every config of each tuned kernel's space included."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    out, seen = [], set()
    for arch in archs:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        for dtype, tf32, layers in modes:
            if dtype == "bfloat16" and arch < 80:
                continue  # the backend refuses bf16 below sm_80
            for layer in layers:
                log = []
                with _recording(arch, log) as launch:
                    _primitives(launch, layer, dtype, tf32)
                tag = f"{dtype}{'-tf32' if tf32 else ''} {layer}"
                for name, args, kwargs, _ in log:
                    fn = _jit(getattr(kernels(), name))
                    for cfg in configs(name, args, kwargs, arch):
                        options, sig, consts, attrs = specialise(name, args, kwargs, cfg, backend)
                        key = (
                            name,
                            arch,
                            str(sorted(sig.items())),
                            str(sorted(consts.items())),
                            str(sorted(attrs.items())),
                            options.num_warps,
                            options.num_stages,
                        )
                        if key in seen:
                            continue
                        seen.add(key)
                        named = {fn.arg_names[p[0]]: v for p, v in consts.items()}
                        tiles = (
                            " ".join(f"{k[6:]}{v}" for k, v in named.items() if k.startswith("BLOCK_"))
                            + f" w{options.num_warps} st{options.num_stages}"
                        )
                        label = f"{tag} {_summary({k: v for k, v in named.items() if k.isupper()})} {tiles}"
                        out.append((name, label, arch, (fn, sig, consts, attrs), options))
    if debug_variant:  # the bound assertions as a debug build compiles them (TRITON_DEBUG=1)
        for name, label, arch, (fn, sig, consts, attrs), options in list(out):
            if name == "dsconv_fwd_kernel" and "float16 b3" in label and "RELU=1" in label:
                dbg = dict(consts)
                dbg[(fn.arg_names.index("DEBUG"),)] = True
                out.append(
                    (
                        name,
                        label + " DEBUG",
                        arch,
                        (fn, sig, dbg, attrs),
                        __import__("dataclasses").replace(options, debug=True),
                    )
                )
                break
    return out


def compile_one(fn, sig, consts, attrs, options, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(
        ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32), options=options.__dict__
    )
    # ptxas as Triton runs it (triton/backends/nvidia/compiler.py make_cubin): -lineinfo, --regAllocOptLevel=2.
    res = subprocess.run(
        [_ptxas(), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}", "-", "-o", os.devnull],
        input=compiled.asm["ptx"],
        capture_output=True,
        text=True,
        check=True,
    )
    log = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    shared = int(compiled.metadata.shared)
    return dict(
        registers=regs,
        shared_bytes=shared,
        spill_stores=int(spill.group(1)) if spill else 0,
        spill_loads=int(spill.group(2)) if spill else 0,
        occupancy=round(occupancy(arch, regs, shared, options.num_warps), 4),
    )


def rows(archs=ARCHS, modes=MODES, kernels_only=None, first_variant_only=False, progress=False) -> list[dict]:
    """One row per distinct compile (kernel x specialisation x config x arch)."""
    out, seen = [], set()
    vs = variants(archs, modes, debug_variant=not first_variant_only)
    t0 = time.time()
    for i, (name, label, arch, src, options) in enumerate(vs):
        if kernels_only is not None and name not in kernels_only:
            continue
        if first_variant_only and (name, arch) in seen:
            continue
        seen.add((name, arch))
        r = compile_one(*src, options, arch)
        out.append(dict(backend="triton", kernel=name, variant=label, arch=f"sm_{arch}", **r))
        if progress:
            print(
                f"[{i + 1}/{len(vs)} {time.time() - t0:.0f}s] {name} {label} sm_{arch}: {r}",
                file=sys.stderr,
                flush=True,
            )
    return out


COLUMNS = (
    "backend",
    "kernel",
    "variant",
    "arch",
    "registers",
    "shared_bytes",
    "spill_stores",
    "spill_loads",
    "occupancy",
)


def markdown(rs) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rs:
        lines.append("| " + " | ".join(f"{r[c]:.0%}" if c == "occupancy" else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def summary(rs) -> str:
    """Per kernel and arch: builds, register range, lowest occupancy, spill bytes."""
    by = {}
    for r in rs:
        by.setdefault((r["kernel"], r["arch"]), []).append(r)
    lines = ["| kernel | arch | builds | registers | occupancy | spill bytes |", "|---|---|---:|---|---|---:|"]
    for (k, a), g in sorted(by.items()):
        regs = [r["registers"] for r in g]
        occ = [r["occupancy"] for r in g]
        sp = sum(r["spill_stores"] + r["spill_loads"] for r in g)
        lines.append(f"| {k} | {a} | {len(g)} | {min(regs)}-{max(regs)} | {min(occ):.0%}-{max(occ):.0%} | {sp} |")
    return "\n".join(lines)


def _update_combined(path: Path, rs) -> None:
    """Replace the Triton rows of tools/compile_report.py's table in ``path`` and its spill total."""
    text = path.read_text()
    lines = text.splitlines()
    keep = [ln for ln in lines if not ln.startswith("| triton |")]
    at = max(i for i, ln in enumerate(keep) if ln.startswith("| ") and not ln.startswith("| backend"))
    new = markdown(rs).splitlines()[2:]
    keep[at + 1 : at + 1] = new
    total = sum(
        int(c[6]) + int(c[7])
        for c in (ln.split(" | ") for ln in keep if ln.startswith("| cuda |") or ln.startswith("| triton |"))
    )
    out = "\n".join(keep) + "\n"
    out = re.sub(r"Total spill bytes: \d+\.", f"Total spill bytes: {total}.", out)
    path.write_text(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(map(str, ARCHS)))
    p.add_argument("--only", help="exploring: DTYPE[-tf32]:LAYER[,...] instead of every mode, e.g. float16:b3")
    p.add_argument("--kernels", help="exploring: only these kernels (comma-separated)")
    p.add_argument(
        "--explore",
        action="store_true",
        help="every config of each space for every launch, whatever its scope (to derive the scopes)",
    )
    p.add_argument("--out", help="write the Triton report (markdown) here")
    p.add_argument("--update", help="replace the Triton rows of this combined report (tools/compile_report.py's)")
    args = p.parse_args()
    archs = tuple(int(a) for a in args.archs.split(","))
    global EXPLORE
    EXPLORE = args.explore
    modes = MODES
    if args.only:
        modes = tuple(
            (m.split(":")[0].split("-")[0], m.split(":")[0].endswith("-tf32"), (m.split(":")[1],))
            for m in args.only.split(",")
        )
    t0 = time.time()
    rs = rows(archs, modes, kernels_only=args.kernels.split(",") if args.kernels else None, progress=True)
    spills = sum(r["spill_stores"] + r["spill_loads"] for r in rs)
    import triton

    modes = ", ".join(f"{dt}{' (TF32)' if tf32 else ''}: {'/'.join(ls)}" for dt, tf32, ls in modes)
    text = (
        f"# Compile report: Triton kernels\n\nGenerated by `python tools/report_triton.py` (triton "
        f"{triton.__version__}, its ptxas; static compiler output, no GPU involved) in "
        f"{time.time() - t0:.0f} s. Every launch the launchers make for the four primitives (and recompute "
        f"mode, and the split statistics' apply pass) on these layers at batch 32 ({modes}; {LAYERS}), specialised as Triton's runtime specialises "
        f"it, and every config of each autotuned kernel's space. Occupancy is theoretical.\n\n"
        f"{len(rs)} kernel builds, {spills} spill bytes in total.\n\n"
        f"## Summary\n\n{summary(rs)}\n\n## Every build\n\n{markdown(rs)}\n"
    )
    if args.out:
        Path(args.out).write_text(text)
    if args.update:
        _update_combined(Path(args.update), rs)
    print(text)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
