"""benchmarks/_timing.py: the one timing helper of the benchmark scripts (fake clock: exact values)."""
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def timing(monkeypatch):
    spec = importlib.util.spec_from_file_location("_timing", BENCHMARKS / "_timing.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_timing", module)  # as a script's import would (dataclasses need it)
    spec.loader.exec_module(module)
    return module


class Clock:
    """perf_counter/process_time that advance only when a timed function runs, by the durations given."""

    def __init__(self, durations, cpu_factor=0.5):
        self.now, self.cpu, self.durations, self.cpu_factor, self.calls = 0.0, 0.0, list(durations), cpu_factor, []

    def fn(self, name="f"):
        def run():
            step = self.durations.pop(0)
            self.now += step
            self.cpu += step * self.cpu_factor
            self.calls.append(name)
            return len(self.calls)
        return run


def install(monkeypatch, timing, clock):
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock.now)
    monkeypatch.setattr(timing.time, "process_time", lambda: clock.cpu)


def test_best_and_median_time_skip_the_warmup_call(monkeypatch, timing):
    clock = Clock([100.0, 3.0, 1.0, 2.0, 100.0, 3.0, 1.0, 8.0])
    install(monkeypatch, timing, clock)
    syncs = []
    assert timing.best_time(clock.fn(), 3, lambda: syncs.append(1)) == 1.0
    assert len(syncs) == 1 + 2 * 3  # after the warm-up, and before and after each timed call
    assert timing.median_time(clock.fn(), 3) == 3.0


def test_measure_without_warmup_keeps_last_result_and_fastest_cpu(monkeypatch, timing):
    clock = Clock([4.0, 2.0, 6.0, 9.0, 7.0, 1.0])
    install(monkeypatch, timing, clock)
    run = timing.measure(clock.fn(), 3, warmup=False)
    assert (run.seconds, run.cpu_seconds, run.result, run.times) == (2.0, 1.0, 3, [4.0, 2.0, 6.0])
    assert timing.measure(clock.fn(), 3, warmup=False, reduce=statistics.median).seconds == 7.0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        timing.measure(clock.fn(), 0)


def test_timed_pair_alternates_and_takes_medians(monkeypatch, timing):
    clock = Clock([9.0, 9.0, 1.0, 10.0, 3.0, 30.0, 2.0, 20.0])
    install(monkeypatch, timing, clock)
    assert timing.timed_pair(clock.fn("a"), clock.fn("b"), 3) == (2.0, 20.0)
    assert clock.calls == ["a", "b"] * 4


def test_matmul_flops_counts_two_flops_per_multiply_add(monkeypatch, timing):
    monkeypatch.setattr(timing, "best_time", lambda fn, repeats, sync: 0.5)
    assert timing.matmul_flops(size=8, repeats=1) == 2 * 8 ** 3 / 0.5


def test_a_script_runs_from_the_repository_root():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "ca_dino_eer.py"), "--trials", "2000"],
                          capture_output=True, text=True, timeout=120, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr
    assert "vectorised EER:" in done.stdout and "-> equal" in done.stdout
