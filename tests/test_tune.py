"""The measured backend choice (fused_dsconv/tune.py): selection, cache, controls, compile, a real CPU run.

Timings are injected (``tune.options(timer=...)``) everywhere but in ``test_real_cpu_run_uses_the_measured_winner``,
which asserts only what holds whatever the machine's load: the winner is the fastest measured median and runs.
"""

import copy
import json
import multiprocessing
import os

import pytest
import torch

from fused_dsconv import JointBlock, backends, cli, tune
from fused_dsconv.backends.reference import ReferenceBackend
from fused_dsconv.saved_activations import module_saved_bytes
from fused_dsconv.testing import assert_close

D = torch.float64


@pytest.fixture(autouse=True)
def tuning_on(monkeypatch, tmp_path):
    """Tuning on, a private cache directory, nothing remembered from other tests."""
    monkeypatch.setenv("FUSED_DSCONV_TUNE", "1")
    monkeypatch.setenv("FUSED_DSCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FUSED_DSCONV_BACKEND", raising=False)
    tune.clear_memory()
    yield
    tune.clear_memory()


class FakeTimer:
    """Injected timings: ``times[name]`` seconds (or an exception the candidate raises); records its calls."""

    def __init__(self, **times):
        self.times = times
        self.calls = []

    def __call__(self, problem, names):
        self.calls.append((problem, list(names)))
        return {n: self.times.get(n, 1.0) for n in names}


def no_timer(problem, names):
    raise AssertionError(f"nothing should be measured here, got {problem.key} with {names}")


def block_and_input(c=4, k=6, n=2, side=7, train=True, **kw):
    block = JointBlock(c, k, 2, 2, dtype=D, **kw).train(train)
    with torch.no_grad():
        for p in block.parameters():
            p.uniform_(0.3, 1.2) if p.dim() == 1 else p.normal_(0, 0.5)
    return block, torch.randn(n, c, side, side, dtype=D, requires_grad=True)


def test_fastest_wins_ties_stay_in_priority_order_and_failures_are_skipped():
    cases = [
        (dict(reference=2e-3, unfused=1e-3), "unfused"),
        (dict(reference=1e-3, unfused=2e-3), "reference"),
        (dict(reference=1e-3, unfused=1e-3), "reference"),  # tie: the earlier candidate (priority, unfused last)
        (dict(reference=RuntimeError("kernel exploded\nsecond line"), unfused=5e-3), "unfused"),
    ]
    for side, (times, winner) in enumerate(cases, start=5):  # a new problem (input side) per case
        timer = FakeTimer(**times)
        block, x = block_and_input(side=side)
        with tune.options(timer=timer):
            block(x)
        problem, decision = block.last_tuning
        assert timer.calls == [(problem, ["reference", "unfused"])]
        assert (decision.choice, block.last_backend, decision.source) == (winner, winner, "measured")
        assert set(decision.times) == {n for n, t in times.items() if isinstance(t, float)}
    assert decision.skipped["reference"] == "raised RuntimeError: kernel exploded"
    assert "x is on cpu" in decision.skipped["native"]


def test_every_candidate_failing_falls_back_to_the_priority_order_and_is_not_stored():
    block, x = block_and_input()
    with tune.options(timer=FakeTimer(reference=MemoryError(), unfused=RuntimeError("out of memory"))):
        block(x)
    decision = block.last_tuning[1]
    assert decision.choice == block.last_backend == "reference" and decision.source.startswith("untimed")
    assert decision.skipped["unfused"] == "raised RuntimeError: out of memory"
    assert not tune.cache_path().exists()


class VariantBackend(ReferenceBackend):
    """The reference primitives under two named variants, recording which variant ran."""

    name = "fake"
    ran: list = []

    def __init__(self, variant="default"):
        self.variant = variant

    def variants(self, problem):
        return ["default", "wide"]

    def with_variant(self, variant):
        if variant not in ("default", "wide"):
            raise ValueError(f"backend 'fake' has no variant {variant!r}")
        return VariantBackend(variant)

    def forward_train(self, *args):
        VariantBackend.ran.append(self.variant)
        return super().forward_train(*args)


def test_backend_variants_are_candidates_and_the_winner_is_passed_to_the_op(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", [VariantBackend(), *backends._REGISTRY])
    VariantBackend.ran.clear()
    timer = FakeTimer(fake=3e-3, **{"fake:wide": 1e-3}, reference=2e-3, unfused=4e-3)
    block, x = block_and_input()
    with tune.options(timer=timer):
        out = block(x)
    assert timer.calls[0][1] == ["fake", "fake:wide", "reference", "unfused"]
    assert block.last_backend == "fake:wide" and VariantBackend.ran == ["wide"]
    assert_close(out, block.to_unfused()(x), D, "variant out", verbose=False)
    with pytest.raises(ValueError, match="no variant 'narrow'"):
        JointBlock(4, 6, backend="fake:narrow")


def test_unfused_choice_keeps_the_layers_semantics():
    """Chosen "unfused", the block is its layers: outputs, gradients, running statistics, counter."""
    block, x = block_and_input(momentum=None)
    twin = block.to_unfused()
    with tune.options(timer=FakeTimer(reference=2.0, unfused=1.0)):
        for step in range(3):
            xs = x.detach().add(step).requires_grad_()
            xt = xs.detach().clone().requires_grad_()
            out, ref = block(xs), twin(xt)
            assert block.last_backend == "unfused"
            assert torch.equal(out, ref)
            out.sum().backward(), ref.sum().backward()
            assert torch.equal(xs.grad, xt.grad)
    for (name, a), b in zip(block.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(block.parameters(), twin.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_an_input_the_op_rejects_raises_before_anything_is_measured_or_changed():
    """Batch statistics of one value per channel: the fused path's error, even where unfused would "win"."""
    block, _ = block_and_input()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with tune.options(timer=no_timer), pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        block(torch.randn(1, 4, 1, 1, dtype=D))
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    assert block.last_backend is None and block.last_tuning is None


def test_recompute_never_considers_the_unfused_layers_for_backward():
    block, x = block_and_input(recompute=True)
    with tune.options(timer=no_timer):  # one candidate left on CPU: nothing to time
        block(x)
    decision = block.last_tuning[1]
    assert decision.choice == "reference" and decision.source == "only candidate"
    assert "recompute=True" in decision.skipped["unfused"]
    timer = FakeTimer(reference=2.0, unfused=1.0)
    with tune.options(timer=timer), torch.no_grad():  # no backward, nothing saved: unfused may win
        block(x)
    assert timer.calls[0][1] == ["reference", "unfused"] and block.last_backend == "unfused"


def test_cache_hit_miss_and_invalidation_on_a_version_change(monkeypatch):
    timer = FakeTimer(reference=2e-3, unfused=1e-3)
    block, x = block_and_input()
    with tune.options(timer=timer):
        block(x)
        block(x)  # memory hit
        assert len(timer.calls) == 1
        data = json.loads(tune.cache_path().read_text())
        (section,) = data["environments"].values()
        entry = section["decisions"][block.last_tuning[0].key]
        assert entry["choice"] == "unfused" and entry["times_ms"] == {"reference": 2.0, "unfused": 1.0}
        assert section["env"]["torch"] == torch.__version__

        tune.clear_memory()  # a new process: the file answers
        fresh, _ = block_and_input()
        fresh(x)
        assert len(timer.calls) == 1 and fresh.last_tuning[1].source == "cache"
        assert fresh.last_backend == "unfused"
        with tune.options(refresh=True):  # re-measure what came from the file
            fresh(x)
        assert len(timer.calls) == 2 and fresh.last_tuning[1].source == "measured"

        tune.clear_memory()
        monkeypatch.setattr(torch, "__version__", "0.0.0+another")  # another torch: measure afresh
        block(x)
        assert len(timer.calls) == 3
    assert len(json.loads(tune.cache_path().read_text())["environments"]) == 2


def test_a_cached_choice_that_can_no_longer_run_is_measured_again():
    timer = FakeTimer(reference=2e-3, unfused=1e-3)
    block, x = block_and_input()
    with tune.options(timer=timer):
        block(x)
    data = json.loads(tune.cache_path().read_text())
    for section in data["environments"].values():
        for entry in section["decisions"].values():
            entry["choice"] = "native"  # cannot run CPU tensors
    tune.cache_path().write_text(json.dumps(data))
    tune.clear_memory()
    with tune.options(timer=timer):
        block(x)
    assert len(timer.calls) == 2 and block.last_backend == "unfused"


def test_corrupted_cache_file_is_ignored_with_a_warning_and_rebuilt():
    path = tune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "environments": {"abc": ')
    block, x = block_and_input()
    with tune.options(timer=FakeTimer(reference=2e-3, unfused=1e-3)):
        with pytest.warns(UserWarning, match="ignoring the tuning cache .* it will be rebuilt"):
            block(x)
    assert block.last_backend == "unfused"
    data = json.loads(path.read_text())
    (section,) = data["environments"].values()
    assert list(section["decisions"]) == [block.last_tuning[0].key]


def test_unwritable_cache_warns_and_keeps_the_choice_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("FUSED_DSCONV_CACHE", str(blocker))
    timer = FakeTimer(reference=2e-3, unfused=1e-3)
    block, x = block_and_input()
    with tune.options(timer=timer), pytest.warns(UserWarning, match="cannot write the tuning cache"):
        block(x)
    with tune.options(timer=timer):
        block(x)
    assert len(timer.calls) == 1 and block.last_backend == "unfused"


def _write_entries(tag, barrier, count, env_id, env):
    barrier.wait()
    for i in range(count):
        tune.store(env_id, env, f"{tag} problem {i}", tune.Decision("reference", {"reference": 1e-3}))


def test_two_processes_writing_the_cache_at_once_lose_nothing():
    ctx = multiprocessing.get_context("fork")  # the children only write files: no torch work after the fork
    barrier = ctx.Barrier(2)
    env_id, env = tune.environment("cpu")
    procs = [ctx.Process(target=_write_entries, args=(tag, barrier, 25, env_id, env)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(tune.cache_path().read_text())
    (section,) = data["environments"].values()
    assert sorted(section["decisions"]) == sorted(f"{t} problem {i}" for t in "ab" for i in range(25))
    assert not [f for f in os.listdir(tune.cache_path().parent) if f.endswith(".tmp")]


def test_forced_backends_and_settings_are_not_tuned(monkeypatch):
    with tune.options(timer=no_timer):
        forced, x = block_and_input(backend="reference")
        forced(x)
        assert forced.last_backend == "reference" and forced.last_tuning is None
        unfused, _ = block_and_input(backend="unfused")
        assert_close(unfused(x), unfused.to_unfused()(x), D, "forced unfused", verbose=False)
        assert unfused.last_backend == "unfused"

        auto, _ = block_and_input()
        monkeypatch.setenv("FUSED_DSCONV_BACKEND", "reference")
        auto(x)
        assert auto.last_backend == "reference" and auto.last_tuning is None
        monkeypatch.delenv("FUSED_DSCONV_BACKEND")

        monkeypatch.setenv("FUSED_DSCONV_TUNE", "0")
        auto(x)
        assert auto.last_backend == "reference" and auto.last_tuning is None
        monkeypatch.setenv("FUSED_DSCONV_TUNE", "yes")
        with pytest.raises(ValueError, match="FUSED_DSCONV_TUNE='yes' must be 0"):
            auto(x)
        monkeypatch.setenv("FUSED_DSCONV_TUNE", "1")

        torch.use_deterministic_algorithms(True)
        try:
            auto(x)
        finally:
            torch.use_deterministic_algorithms(False)
        assert auto.last_backend == "reference" and auto.last_tuning is None
        with torch.device("meta"):
            JointBlock(4, 6).eval()(torch.empty(2, 4, 7, 7))  # meta tensors: never measured


@pytest.mark.parametrize("winner", ["unfused", "reference"])
def test_compile_fullgraph_uses_the_eager_choice_and_never_measures(winner):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    timer = FakeTimer(reference=1.0 if winner == "reference" else 2.0, unfused=1.5)
    block, x = block_and_input()
    twin = block.to_unfused()
    torch._dynamo.reset()
    with tune.options(timer=timer):
        block(x.detach())  # eager: measures
        assert block.last_backend == winner
        out = torch.compile(block, fullgraph=True, backend=capture)(x)
    out.sum().backward()
    assert len(timer.calls) == 1  # the trace measured nothing
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    fused = [n.args[-1] for g in graphs for n in g.graph.nodes if "fused_dsconv" in str(n.target)]
    if winner == "unfused":
        assert not fused and any("conv2d" in t for t in targets)
    else:
        assert fused == ["reference"]
    x2 = x.detach().clone().requires_grad_()
    ref = twin(x2)
    ref.sum().backward()
    assert_close(out, ref, D, "compiled out", verbose=False)
    assert_close(x.grad, x2.grad, D, "compiled grad", verbose=False)


def test_real_cpu_run_uses_the_measured_winner():
    """No injected timings: both candidates are measured on this CPU and the faster median runs. Inside a
    saved-tensor hook (as a memory probe uses): the hook sees the block's tensors only, not the tuner's."""
    block, x = block_and_input(c=3, k=5, side=6)
    block.float()
    x = x.detach().float()
    rng = torch.get_rng_state()
    first = module_saved_bytes(block, x)  # measures, inside the probe's hooks
    assert torch.equal(torch.get_rng_state(), rng)  # the tuner drew nothing from the global generator
    problem, decision = block.last_tuning
    assert decision.source == "measured" and set(decision.times) == {"reference", "unfused"}
    assert all(t > 0 for t in decision.times.values())
    assert decision.choice == min(decision.times, key=decision.times.get) == block.last_backend
    assert module_saved_bytes(block, x) == first  # the cached choice: same path, same saved bytes
    assert block.last_tuning[1] is decision
    entry = json.loads(tune.cache_path().read_text())["environments"]
    assert [e["decisions"][problem.key]["choice"] for e in entry.values()] == [decision.choice]


def test_tune_command_prints_each_candidate_the_winner_and_the_speedup(capsys):
    timer = FakeTimer(reference=1e-3, unfused=2e-3)
    with tune.options(timer=timer):
        assert (
            cli.main(
                ["tune", "--model", "jointnet_a050_d3", "--batch", "2", "--rho", "0.15", "--train", "--device", "cpu"]
            )
            == 0
        )
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("blocks.")]
    assert len(lines) == 9 and len(timer.calls) == 9 and all(p.mode == "train_fwd_bwd" for p, _ in timer.calls)
    assert all(l.split()[-3:] == ["reference", "2.00x", "measured"] for l in lines), out
    assert "1.000" in lines[0] and "2.000" in lines[0] and "native: x is on cpu" in out
    with tune.options(timer=timer):  # second run: every choice from memory, nothing measured; whole steps compared
        cli.main(["tune", "--model", "jointnet_a050_d3", "--batch", "2", "--rho", "0.15", "--train", "--compare", "2"])
    assert len(timer.calls) == 9
    out = capsys.readouterr().out
    assert "whole model, one training step (forward, cross-entropy, backward, Adam), 2 interleaved rounds" in out
    assert "auto / plain layers: " in out and out.count(" median ") == 2


def test_tune_model_leaves_the_model_as_it_was():
    from fused_dsconv.models import JointNet

    model = JointNet(num_classes=3, alpha=0.25, rho=0.15).eval()
    before = copy.deepcopy(model.state_dict())
    with tune.options(timer=FakeTimer(reference=1.0, unfused=2.0)):
        rows = tune.tune_model(model, torch.randn(2, 3, 34, 34), train=True)
    assert not model.training and len(rows) == 9 and all(d.choice == "reference" for _, _, d in rows)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(b.last_backend == "reference" for b in model.blocks)


def test_cuda_environment_key_and_synchronisation(monkeypatch):
    """The CUDA side of the key and the timing loop, with the device queries stubbed (no GPU here)."""

    class Props:
        name, major, minor = "NVIDIA Test GPU", 8, 6

    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12080, raising=False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    ident, env = tune.environment("cuda:0")
    assert (env["device"], env["capability"], env["driver"], env["cuda"]) == (
        "NVIDIA Test GPU",
        "8.6",
        12080,
        torch.version.cuda,
    )
    assert "threads" not in env and ident != tune.environment("cpu")[0]
    tune.clear_memory()
    Props.name = "NVIDIA Other GPU"
    assert tune.environment("cuda:0")[0] != ident  # another GPU: measured afresh
    samples, failed = tune.time_interleaved(
        {"a": lambda: None}, tune.synchronizer(torch.device("cuda", 0)), min_rounds=2, max_rounds=2, min_seconds=0
    )
    assert len(samples["a"]) == 2 and not failed
    assert calls == [torch.device("cuda", 0)] * 5  # after the untimed call, then around each timed one


def test_a_block_pickled_before_tuning_existed_still_runs():
    import pickle

    block, x = block_and_input()
    for name in ("last_tuning", "tuned_choices", "tuning_shortcuts"):
        del block.__dict__[name]
    restored = pickle.loads(pickle.dumps(block))
    with tune.options(timer=FakeTimer(reference=1.0, unfused=2.0)):
        restored(x)
    assert restored.last_backend == "reference"
