"""The benchmark suite's pieces that must hold without running it: case list, skip logic, report output."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import report  # noqa: E402


def test_block_cases_cover_every_paper_shape():
    cases = benchlib.block_cases()
    assert len(cases) == 2 * 2 * 2 * 9 and len({c.id for c in cases}) == len(cases)
    first = {c.id: c for c in cases}
    assert first["a100_r100_d3_b1"].shape == "32->64 s2 d3 224x224"
    assert first["a100_r086_d1_b9"].shape == "1024->1024 s1 d1 6x6"  # 192 -> 96 -> 48 -> 24 -> 12 -> 6
    assert first["a075_r100_d3_b9"].shape == "768->768 s1 d3 7x7"


def test_implementations_follow_the_backend_registry():
    from fused_dsconv import backends

    impls = benchlib.impl_names()
    assert impls[:3] == ["eager-nchw", "eager-channels_last", "compile-nchw"]
    for name in backends.names():
        assert f"{name}-nchw" in impls and f"{name}-channels_last" in impls


def test_skip_reasons():
    cpu = torch.device("cpu")
    assert benchlib.compile_unavailable(cpu, False, benchlib.CPU_COMPILE_CASE) is None
    assert "paper-size" in benchlib.compile_unavailable(cpu, False, "a075_r100_d1_b2")
    assert benchlib.compile_unavailable(cpu, True, "a075_r100_d1_b2") is None
    assert benchlib.backend_unavailable("reference", torch.empty(1, 1, 1, 1)) is None
    assert "auto-nchw" in benchlib.impl_names() and "auto-channels_last" in benchlib.impl_names()
    assert benchlib.auto_unavailable(False, benchlib.AUTO_BLOCK_CASE) is None
    assert benchlib.auto_unavailable(False, "classifier") is None
    assert "paper-size" in benchlib.auto_unavailable(False, "a075_r100_d1_b2")
    assert benchlib.auto_unavailable(True, "a075_r100_d1_b2") is None


def test_cuda_branches(monkeypatch):
    """The suite's CUDA-only code paths, run with the device queries stubbed (no GPU here): the sm_61
    torch.compile skip, synchronisation inside the timed callable, peak memory, and the device record."""
    calls = []
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5096)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080 Ti")

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert "capability >= 7.0" in benchlib.compile_unavailable(cuda, True, "classifier")
    info = benchlib.environment(cuda)
    assert info["device"] == "NVIDIA GeForce GTX 1080 Ti" and info["capability"] == "sm_61"

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert benchlib.compile_unavailable(cuda, False, benchlib.CUDA_COMPILE_CONFIG + "_b4") is None
    assert benchlib.compile_unavailable(cuda, False, "classifier") is None
    assert "CI size compiles the blocks of" in benchlib.compile_unavailable(cuda, False, "a075_r100_d1_b2")
    assert benchlib.compile_unavailable(cuda, True, "a075_r100_d1_b2") is None

    settings = benchlib.make_settings(False, "cuda")
    assert settings.device.type == "cuda" and settings.rounds == 20 and settings.warmup == 3

    benchlib.synchronizer(cuda)()
    assert calls == [("sync", cuda)]
    calls.clear()
    assert benchlib.cuda_peak_bytes(lambda: calls.append(("fn", None)), cuda) == 4096
    assert calls == [("sync", cuda), ("reset", cuda), ("fn", None), ("sync", cuda)]  # synchronised around fn
    assert benchlib.cuda_peak_bytes(lambda: None, torch.device("cpu")) is None


def test_triton_interpreter_is_not_benchmarked(monkeypatch):
    from fused_dsconv import backends

    monkeypatch.setattr(backends.get("triton"), "unavailable", lambda x: None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "not a performance mode" in benchlib.backend_unavailable("triton", torch.empty(1, 1, 1, 1))


def test_largest_batch_derivation():
    # 11 GiB - 1 GiB margin - 16 B x 1M params - 0 fixed, over 10 MiB per sample
    assert benchlib.largest_batch(10 * 2**20, 0, 2**20) == (10 * 2**30 - 16 * 2**20) // (10 * 2**20)


def _fake_run():
    def bench(kind, case, mode, impl, median, **extra):
        info = {
            "kind": kind,
            "case": case,
            "config": case.rsplit("_b", 1)[0],
            "mode": mode,
            "impl": impl,
            "shape": "32->64 s2 d3 224x224",
            "device": "CPU (x86_64, 2 threads)",
            "torch": "2.14.1",
            "batch": 2,
            "size": "ci-size",
            **extra,
        }
        return {
            "extra_info": info,
            "stats": {
                "median": median,
                "iqr": median / 10,
                "min": median,
                "rounds": 3,
                "q1": median * 0.95,
                "q3": median * 1.05,
            },
        }

    mem = {"unfused": 4096, "fused": 2048, "recompute": 1024}
    cmem = {"per_sample": {"unfused": 2**21, "fused": 2**20, "recompute": 2**19}, "fixed": {}, "params": 1}
    return {
        "datetime": "2026-11-23T19:00:00",
        "benchmarks": [
            bench("block", "a100_r100_d3_b1", "train_fwd", "eager-nchw", 0.010, MEASURED_saved_bytes=mem),
            bench("block", "a100_r100_d3_b1", "train_fwd", "reference-nchw", 0.020, MEASURED_saved_bytes=mem),
            bench("block", "a100_r100_d3_b1", "eval", "eager-nchw", 0.004),
            bench(
                "classifier",
                "a100_r100_d3",
                "train_step",
                "eager-nchw",
                0.1,
                MEASURED_memory=cmem,
                DERIVED_max_batch_11GiB={"unfused": 100, "fused": 200, "recompute": 300},
                resolution=224,
            ),
            bench(
                "classifier",
                "a100_r100_d3",
                "train_step",
                "auto-nchw",
                0.09,
                resolution=224,
                tuning=[
                    {
                        "block": "b1",
                        "shape": "32->64 s2 d3 224x224",
                        "mode": "train_fwd_bwd",
                        "winner": "reference",
                        "MEASURED_median_ms": {"reference": 10.0, "unfused": 15.0},
                        "speedup_vs_unfused": 1.5,
                        "source": "measured",
                    }
                ],
            ),
        ],
    }


def test_report_markdown(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_fake_run()))
    md = tmp_path / "out.md"
    assert report.main([str(path), "--md", str(md), "--model-batch", "2"]) == 0
    text = md.read_text()
    assert "MEASURED on CPU (x86_64, 2 threads)" in text
    # eval row comes before train_fwd; baseline / ours = 0.010 / 0.020
    assert text.index("| eval |") < text.index("| train_fwd |")
    assert "| 0.50; 0.50 |" in text
    assert "| a100_r100_d3_b1 | 4 | 2 | 1 | 0.500 | 0.250 |" in text
    assert "100 / 200 / 300" in text
    assert "MODEL (analytic, bytes only, not measured" in text
    assert (
        "| classifier | a100_r100_d3 | train_step | auto-nchw | b1 | 32->64 s2 d3 224x224 | reference 10; "
        "unfused 15 | reference | 1.50 |"
    ) in text


def test_report_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG plot needs matplotlib (pip install '.[test]')")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_fake_run()))
    png = tmp_path / "out.png"
    assert (
        report.main(
            [
                str(path),
                "--md",
                str(tmp_path / "out.md"),
                "--model-batch",
                "2",
                "--png",
                str(png),
                "--config",
                "a100_r100_d3",
            ]
        )
        == 0
    )
    assert png.stat().st_size > 1000


def test_memory_summary_markdown():
    conf = _bench_conftest()
    rows = [
        {
            "kind": "block",
            "case": "c1",
            "shape": "s",
            "batch": 2,
            "unfused": 4096,
            "fused": 2048,
            "recompute": 1024,
            "peak_unfused": 2**21,
            "peak_fused": 2**20,
            "peak_recompute": 2**19,
        },
        {
            "kind": "classifier",
            "config": "a100_r100_d3",
            "resolution": 224,
            "params": 10,
            "per_sample": {"unfused": 2**21, "fused": 2**20, "recompute": 2**19},
            "max_batch": {"unfused": 1, "fused": 2, "recompute": 3},
        },
    ]
    text = conf.memory_markdown(rows)
    assert "| c1 | s | 2 | 4 | 2 | 1 | 0.500 | 0.250 | 2.0 / 1.0 / 0.5 |" in text
    assert "| a100_r100_d3 | 224 | 10 | 2.00 | 1.00 | 0.50 | 0.500 | 0.250 | 1 / 2 / 3 |" in text


def _bench_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_conftest_for_test", BENCH / "conftest.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_ratio_summary_is_a_geometric_mean_per_mode():
    def b(case, mode, impl, median):
        return {"median": median, "extra_info": {"kind": "block", "case": case, "mode": mode, "impl": impl}}

    benches = [
        b("c1", "eval", "eager-nchw", 1.0),
        b("c1", "eval", "reference-nchw", 2.0),
        b("c2", "eval", "eager-nchw", 1.0),
        b("c2", "eval", "reference-nchw", 8.0),
        b("c3", "eval", "reference-nchw", 100.0),
    ]  # no baseline for c3: not counted
    lines = _bench_conftest().ratio_summary(benches)
    assert lines == ["  block eval, median time / eager-nchw (geometric mean over cases): reference-nchw 4.00x (2)"]


def test_cases_dropped_at_collection_are_the_ones_the_benchmarks_would_skip():
    cpu = benchlib.make_settings(False, "cpu")
    case = benchlib.block_cases()[0]
    assert "runs cuda tensors only" in benchlib.case_unavailable({"impl": "native-nchw", "case": case}, cpu)
    assert benchlib.case_unavailable({"impl": "eager-channels_last", "case": case}, cpu) is None
    assert benchlib.case_unavailable({"impl": "reference-nchw", "cfg": (1.0, 1.0, 3)}, cpu) is None
    assert "CI size runs the classifier" in benchlib.case_unavailable(
        {"impl": "reference-nchw", "cfg": (0.5, 1.0, 3)}, cpu
    )
    full = benchlib.make_settings(True, "cpu")
    assert benchlib.case_unavailable({"impl": "reference-nchw", "cfg": (0.5, 1.0, 3)}, full) is None
