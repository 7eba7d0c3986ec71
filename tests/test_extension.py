"""Finding the native extension: a stale or missing build becomes a reason, never a crash."""
import importlib

import pytest

from fused_dsconv import _extension


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_extension, "_state", {})
    return monkeypatch


def failing_import(monkeypatch, error):
    original = importlib.import_module

    def fake(name, *args):
        if name == "fused_dsconv._C":
            raise error
        return original(name, *args)
    monkeypatch.setattr(importlib, "import_module", fake)


def test_abi_mismatch_is_reported_with_the_fix(fresh):
    failing_import(fresh, ImportError("_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"))
    assert _extension.load() is None
    reason = _extension.status()
    assert "does not load with torch" in reason and "undefined symbol" in reason
    assert "pip install --no-build-isolation --force-reinstall --no-deps ." in reason


def test_missing_build_without_gpu_explains_itself(fresh):
    failing_import(fresh, ModuleNotFoundError("fused_dsconv._C"))
    assert _extension.load() is None
    assert "not built ahead of time" in _extension.status()


def test_disabled_by_environment(fresh):
    fresh.setenv("FUSED_DSCONV_NO_NATIVE", "1")
    assert _extension.load() is None and "FUSED_DSCONV_NO_NATIVE=1" in _extension.status()
