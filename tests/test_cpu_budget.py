"""A CPU run's budget: the available RAM plus what its own loaded weights hold there."""

import torch

from hires import memory
from hires.memory import anonymous_rss, free_memory

GB = 10**9
CPU = torch.device("cpu")


def test_a_cpu_budget_gives_back_the_loaded_weights(monkeypatch):
    """The plan counts the weights as its own: a budget read after loading them must not count
    them as taken too (an SDXL fp32 run on a 24 GiB machine was refused at 1024 px)."""
    weights = torch.nn.Linear(1000, 250)  # 1,001,000 bytes
    monkeypatch.setattr(memory, "ram_bytes", lambda: (24 * GB, 9 * GB))
    monkeypatch.setattr(memory, "anonymous_rss", lambda: 2 * GB)
    assert free_memory(CPU) == 9 * GB
    assert free_memory(CPU, (weights,)) == 9 * GB + 1_001_000


def test_memory_mapped_weights_are_not_given_back_twice(monkeypatch):
    """Pages of a mapped file are already in the available figure; only anonymous ones return."""
    weights = torch.nn.Linear(1000, 250)
    monkeypatch.setattr(memory, "ram_bytes", lambda: (24 * GB, 9 * GB))
    monkeypatch.setattr(memory, "anonymous_rss", lambda: 400_000)
    assert free_memory(CPU, (weights,)) == 9 * GB + 400_000


def test_a_cpu_budget_is_unknown_where_the_system_does_not_say(monkeypatch):
    monkeypatch.setattr(memory, "ram_bytes", lambda: (0, 0))
    assert free_memory(CPU, (torch.nn.Linear(4, 4),)) is None


def test_anonymous_rss_counts_a_new_tensor():
    before = anonymous_rss()
    held = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert anonymous_rss() - before > 48 * 2**20
    del held


def test_a_gpu_runs_host_budget_gives_back_its_offloaded_weights_the_same_way(monkeypatch):
    from types import SimpleNamespace

    from hires.costs import host_budget
    from hires.memory import host_room

    weights = torch.nn.Linear(1000, 250)
    monkeypatch.setattr(memory, "ram_bytes", lambda: (128 * GB, 90 * GB))
    monkeypatch.setattr(memory, "anonymous_rss", lambda: 400_000)
    gpu_run = SimpleNamespace(device=torch.device("cuda"), parts=(weights,))
    assert host_budget(gpu_run) == host_room(90 * GB + 400_000)
    assert host_budget(SimpleNamespace(device=CPU, parts=(weights,))) is None
