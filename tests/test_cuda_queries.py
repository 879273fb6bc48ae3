"""The CUDA-only memory helpers, with torch.cuda's functions faked (no GPU needed)."""

from contextlib import contextmanager

import torch

from hires.memory import current, free_memory

GB = 10**9


def test_a_gpus_free_memory_counts_what_torchs_cache_holds_unused(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (asked.append(device), (10 * GB, 80 * GB))[1])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * GB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 12 * GB)
    weights = torch.nn.Linear(4, 4)  # on the CPU: none of it counts on the GPU
    # 10 GB the driver calls free, and 18 GB the cache keeps for the next tensors.
    assert free_memory(torch.device("cuda:1"), (weights,)) == 28 * GB
    assert asked == [torch.device("cuda:1")]  # the GPU asked about, not the current one


def test_a_run_on_a_second_gpu_makes_it_the_current_device(monkeypatch):
    entered = []

    @contextmanager
    def device(d):  # torch.cuda.device: what streams, events and synchronize() default to
        entered.append(d)
        yield
        entered.append("left")

    monkeypatch.setattr(torch.cuda, "device", device)
    with current(torch.device("cuda:1")):
        assert entered == [torch.device("cuda:1")]
    assert entered[-1] == "left"
    entered.clear()
    with current(torch.device("cpu")):
        pass
    assert entered == []  # a CPU run leaves CUDA alone
