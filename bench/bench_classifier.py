"""The whole classifier (stem, nine joint blocks, pool, linear): inference, and one training step
(forward, cross-entropy, backward, Adam update), fused backends next to their baselines.

The training-step cases also measure saved-activation bytes per sample (unfused / fused / recompute)
and derive the largest batch that fits an 11 GiB GPU (see benchlib.largest_batch for the assumptions).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import benchlib
import perf_model
from fused_dsconv import tune
from fused_dsconv.saved_activations import saved_activation_bytes
from fused_dsconv.models import JointNet

NUM_CLASSES = 10  # CIFAR-10, the paper's main experiment
CONFIGS = benchlib.model_configs()
_MEMORY: dict[str, dict] = {}


def _per_sample(model, res: int, device) -> tuple[float, float]:
    """(bytes per sample, fixed bytes) of saved activations: slope and intercept between batch 1 and 2."""
    b = []
    for n in (1, 2):
        x = torch.randn(n, 3, res, res, device=device)
        b.append(saved_activation_bytes(lambda: model(x), model))
    return b[1] - b[0], 2 * b[0] - b[1]


def _memory(cfg: str, timed: JointNet, rho: float, settings, memory_rows) -> dict:
    """Saved bytes per sample, always at the paper's resolution for this rho (whatever the timing scale)."""
    if cfg in _MEMORY:
        return _MEMORY[cfg]
    model = JointNet(timed.num_classes, timed.alpha, rho, list(timed.dilations))
    model.load_state_dict(timed.state_dict())
    dev, res = settings.device, model.resolution
    first = benchlib.first_capable(dev)  # the fused op's saving, whatever auto would measure fastest
    rec = copy.deepcopy(model).set_backend(first)
    for blk in rec.blocks:
        blk.recompute = True
    variants = {
        "unfused": benchlib.unfused_classifier(model),
        "fused": copy.deepcopy(model).set_backend(first),
        "recompute": rec,
    }
    per_sample, fixed = {}, {}
    for key, m in variants.items():
        per_sample[key], fixed[key] = _per_sample(m.to(dev).train(), res, dev)
    layers = perf_model.classifier_layers(1, model.alpha, model.rho, model.dilations[0])
    largest = 4 * max([layers[0].c * res * res] + [l.k * l.ho * l.wo for l in layers])  # fp32 activation
    params = sum(p.numel() for p in model.parameters())
    row = {
        "kind": "classifier",
        "config": cfg,
        "resolution": res,
        "params": params,
        "per_sample": per_sample,
        "fixed": fixed,
        "largest_activation_per_sample": largest,
        "max_batch": {k: benchlib.largest_batch(per_sample[k] + 2 * largest, fixed[k], params) for k in variants},
    }
    memory_rows.append(row)
    _MEMORY[cfg] = row
    return row


@pytest.mark.parametrize("impl", benchlib.impl_names())
@pytest.mark.parametrize("mode", ("inference", "train_step"))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: benchlib.config_id(*c))
def test_classifier(benchmark, settings, env_info, memory_rows, monkeypatch, cfg, mode, impl):
    alpha, rho, d = cfg
    cid = benchlib.config_id(*cfg)
    dev, n = settings.device, settings.model_batch
    name, layout = benchlib.split_impl(impl)
    why = benchlib.classifier_config_unavailable(cid, settings.full)
    if why is not None:
        pytest.skip(why)
    gen = torch.Generator().manual_seed(1234)
    model = JointNet(NUM_CLASSES, alpha, rho * settings.scale, d)  # rho only sets the input side
    res = model.resolution
    x = benchlib.to_layout((torch.randn(n, 3, res, res, generator=gen)).to(dev), layout)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen).to(dev)
    why = benchlib.impl_unavailable(name, x, dev, settings.full, "classifier")
    if why is not None:
        pytest.skip(why)

    benchlib.randomise_bn(model, gen)
    train = mode == "train_step"
    mem = _memory(cid, model, rho, settings, memory_rows) if train else None
    if name in ("eager", "compile"):
        net = benchlib.unfused_classifier(model)
    else:
        net = model.set_backend(name)
        if name == "auto":
            monkeypatch.setenv(tune.ENV_VAR, "1")
    net = net.to(dev).train(train)
    if layout == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    run = net
    if name == "compile":
        torch._dynamo.reset()
        run = torch.compile(net)
    sync = benchlib.synchronizer(dev)

    if train:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)  # the paper's Table 2

        def fn():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(run(x), labels).backward()
            opt.step()
            sync()
    else:

        def fn():
            with torch.no_grad():
                run(x)
            sync()

    with tune.options(refresh=True):  # auto measures in this run, whatever the cache file holds
        for _ in range(settings.warmup + (2 if name == "compile" else 0)):
            fn()
    if name == "auto":
        assert all(b.last_backend == b.last_tuning[1].choice for b in net.blocks)
    elif name not in ("eager", "compile"):
        assert {b.last_backend for b in net.blocks} == {name}

    info = dict(env_info)
    info.update(
        kind="classifier",
        case=cid,
        config=cid,
        mode=mode,
        impl=impl,
        backend=name,
        layout=layout,
        batch=n,
        resolution=res,
        classes=NUM_CLASSES,
        size=settings.label,
        implementation=benchlib.implementation_kind(impl, dev),
    )
    if name == "auto":
        info["tuning"] = benchlib.tuning_summary([(f"b{i + 1}", b) for i, b in enumerate(net.blocks)])
    if mem is not None:
        key = "unfused" if name in ("eager", "compile") else "fused"
        info.update(
            saved_activation_bytes_per_sample=mem["per_sample"][key],
            derived_max_batch_11GiB=mem["max_batch"][key],
            saved_ratio_fused_over_unfused=mem["per_sample"]["fused"] / mem["per_sample"]["unfused"],
            saved_ratio_recompute_over_unfused=mem["per_sample"]["recompute"] / mem["per_sample"]["unfused"],
        )
        info["MEASURED_memory"] = {
            k: mem[k] for k in ("per_sample", "fixed", "largest_activation_per_sample", "params", "resolution")
        }
        info["DERIVED_max_batch_11GiB"] = mem["max_batch"]
        info["peak_allocated_bytes"] = benchlib.cuda_peak_bytes(fn, dev)
    benchmark.extra_info.update(info)
    benchmark.group = f"classifier {cid} {mode} [{res}x{res}, batch {n}]"
    benchmark.pedantic(fn, rounds=settings.model_rounds, iterations=1, warmup_rounds=0)
