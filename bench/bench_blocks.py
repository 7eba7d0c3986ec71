"""Every JointBlock shape of the paper's classifier, three modes, fused backends next to their baselines.

One pytest-benchmark group per (block shape, mode); inside it: unfused eager NCHW, unfused eager
channels_last, torch.compile of the unfused module (where it is benchmarked, see the skip reasons),
and every fused_dsconv backend that can run the input, in both layouts.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import benchlib
import perf_model
from fused_dsconv import JointBlock, tune
from fused_dsconv.saved_activations import module_saved_bytes

CASES = benchlib.block_cases()
_MEMORY: dict[str, dict] = {}


def _inputs(case: benchlib.BlockCase, batch: int, layout: str, device, train: bool):
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    x = torch.randn(batch, case.c, case.h, case.h, generator=gen) + 0.5  # random, never zero-filled
    g = torch.randn(batch, case.k, case.ho, case.ho, generator=gen)
    x, g = (benchlib.to_layout(t.to(device), layout) for t in (x, g))
    return x.requires_grad_(train), g, gen


def _record_memory(case, x, block, memory_rows, settings):
    """Saved-activation bytes (and CUDA peak) of unfused / fused / recompute, once per case."""
    if case.id in _MEMORY:
        return _MEMORY[case.id]
    dev = settings.device
    unf = block.to_unfused().to(dev).train()
    fused = block.to(dev).train()
    fused.backend = benchlib.first_capable(dev)  # the fused op's saving, whatever auto would measure fastest
    rec = JointBlock(case.c, case.k, case.stride, case.dilation, recompute=True, backend=fused.backend).to(dev).train()
    rec.load_state_dict(block.state_dict())
    row = {
        "kind": "block",
        "case": case.id,
        "shape": case.shape,
        "batch": x.shape[0],
        "unfused": module_saved_bytes(unf, x),
        "fused": module_saved_bytes(fused, x),
        "recompute": module_saved_bytes(rec, x),
    }
    if dev.type == "cuda":
        g = torch.randn(x.shape[0], case.k, case.ho, case.ho, device=dev)
        for key, m in (("peak_unfused", unf), ("peak_fused", fused), ("peak_recompute", rec)):
            xx = x.detach().requires_grad_(True)
            row[key] = benchlib.cuda_peak_bytes(lambda: torch.autograd.grad(m(xx), [xx, *m.parameters()], g), dev)
    memory_rows.append(row)
    _MEMORY[case.id] = row
    return row


@pytest.mark.parametrize("impl", benchlib.impl_names())
@pytest.mark.parametrize("mode", benchlib.MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_block(benchmark, settings, env_info, memory_rows, monkeypatch, case, mode, impl):
    dev, n = settings.device, settings.batch
    case = benchlib.at_scale(case, settings.scale)
    name, layout = benchlib.split_impl(impl)
    train = mode != "eval"
    x, g, gen = _inputs(case, n, layout, dev, train)
    why = benchlib.impl_unavailable(name, x, dev, settings.full, case.id)
    if why is not None:
        pytest.skip(why)

    block = JointBlock(case.c, case.k, case.stride, case.dilation)
    benchlib.randomise_bn(block, gen)
    mem = None
    if train:  # measured once per case (first implementation to run it), attached to every implementation
        mem = _record_memory(
            case, x.detach().requires_grad_(True), JointBlock.from_unfused(block.to_unfused()), memory_rows, settings
        )
    if name in ("eager", "compile"):
        module = block.to_unfused()
    else:
        module = block
        block.backend = name
        if name == "auto":
            monkeypatch.setenv(tune.ENV_VAR, "1")
    module = module.to(dev).train(train)
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
    run = module
    if name == "compile":
        torch._dynamo.reset()  # every case compiles afresh; no recompile-limit fallbacks to eager
        run = torch.compile(module)
    params = list(module.parameters())
    sync = benchlib.synchronizer(dev)

    if mode == "eval":

        def fn():
            with torch.no_grad():
                run(x)
            sync()
    elif mode == "train_fwd":

        def fn():
            run(x)
            sync()
    else:

        def fn():
            torch.autograd.grad(run(x), [x, *params], g)
            sync()

    with tune.options(refresh=True):  # auto measures in this run, whatever the cache file holds
        for _ in range(settings.warmup + (2 if name == "compile" else 0)):  # compilation, autotuning, caches
            fn()
    if name == "auto":
        assert block.last_backend == block.last_tuning[1].choice
    elif name not in ("eager", "compile"):
        assert block.last_backend == name, f"ran on {block.last_backend!r}, not {name!r}"

    layer = perf_model.Layer(case.id, n, case.c, case.k, case.h, case.h, case.stride, case.dilation)
    info = dict(env_info)
    info.update(
        kind="block",
        case=case.id,
        config=case.config,
        layer=f"b{case.index}",
        shape=case.shape,
        mode=mode,
        impl=impl,
        backend=name,
        layout=layout,
        batch=n,
        size=settings.label,
        implementation=benchlib.implementation_kind(impl, dev),
        MODEL_unfused_bytes=perf_model.unfused(layer, mode).bytes,
        MODEL_fused_bytes=perf_model.fused(layer, mode).bytes,  # the modelled plan ("design", docs/design.md)
        MODEL_native_bytes=perf_model.native(layer, mode).bytes,  # the shipped CUDA kernels
        MODEL_flops=perf_model.unfused(layer, mode).flops,
    )
    if name == "auto":
        info["tuning"] = benchlib.tuning_summary([("block", block)])
    if mem is not None:
        info["MEASURED_saved_bytes"] = {k: mem[k] for k in ("unfused", "fused", "recompute")}
    if mode == "train_fwd_bwd":
        info["peak_allocated_bytes"] = benchlib.cuda_peak_bytes(fn, dev)
    benchmark.extra_info.update(info)
    benchmark.group = f"block {case.id} {mode} [{case.shape}, batch {n}]"
    benchmark.pedantic(fn, rounds=settings.rounds, iterations=1, warmup_rounds=0)
