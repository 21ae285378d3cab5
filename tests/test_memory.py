"""Peak memory of a measured cell: CUDA's allocator peak, or the process's peak resident set."""

from types import SimpleNamespace

import torch

from diffbench import memory
from diffbench.memory import peak_memory_mb, reset_peak_memory, tune_cpu_allocator

CPU = torch.device("cpu")


def test_peak_memory_mb_on_cpu_is_positive():
    reset_peak_memory(CPU)
    held = torch.ones(16 * 2**20)  # 64 MiB, touched
    assert peak_memory_mb(CPU) >= 64
    del held


def test_peak_memory_reads_and_resets_vmhwm(monkeypatch, tmp_path):
    status, clear_refs = tmp_path / "status", tmp_path / "clear_refs"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n")
    monkeypatch.setattr(memory, "PROC_STATUS", status)
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", clear_refs)
    reset_peak_memory(CPU)
    assert clear_refs.read_text() == "5"
    assert peak_memory_mb(CPU) == 2.0


def test_peak_memory_falls_back_to_getrusage(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "PROC_STATUS", tmp_path / "missing" / "status")
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    reset_peak_memory(CPU)  # cannot reset: no error
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=300 * 1024))
    assert peak_memory_mb(CPU) == 300.0  # ru_maxrss is in KiB on Linux


def test_peak_memory_on_cuda_uses_the_allocator_peak(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", device)) or 3 * 2**20
    )
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", tmp_path / "clear_refs")
    cuda = torch.device("cuda")
    reset_peak_memory(cuda)
    assert peak_memory_mb(cuda) == 3.0
    assert calls == [("reset", cuda), ("peak", cuda)]
    assert not (tmp_path / "clear_refs").exists()


def test_the_cpu_allocator_is_tuned_where_glibc_is():
    assert tune_cpu_allocator() is (memory.ctypes.util.find_library("c") is not None)


def test_asking_whether_the_allocator_was_tuned_does_not_tune_it(monkeypatch):
    monkeypatch.setattr(memory, "_tuned", False)
    calls = []
    real = memory.ctypes.CDLL
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: calls.append(name) or real(name))
    assert memory.cpu_allocator_tuned() is False and calls == [], "a query: nothing tuned"
    tuned = memory.tune_cpu_allocator()
    assert len(calls) == (1 if memory.ctypes.util.find_library("c") else 0)
    assert memory.cpu_allocator_tuned() is tuned
