"""Parked maps: exact-size buffers, reused call after call, unlocked at the end; the planner's
count of the CPU memory they take equals what a simulated 16K-shaped call parks."""

import pytest
import torch

from hires import memsim
from hires import parking as parking_module
from hires.costs import parked_bytes, sdxl_shape
from hires.parking import Parking
from hires.strategy import Strategy, applied


class Driver:
    """Stands in for cudaHostRegister/Unregister: records what is locked."""

    def __init__(self, refuse: bool = False):
        self.refuse, self.locked, self.unlocked, self.pinned = refuse, [], [], []

    def lock(self, t):
        if self.refuse:
            return False
        self.locked.append(t.data_ptr())
        return True

    def unlock(self, t):
        self.unlocked.append(t.data_ptr())

    def mark(self):
        self.marks = getattr(self, "marks", 0) + 1
        driver = self

        class Mark:
            def synchronize(self):
                driver.waited = getattr(driver, "waited", 0) + 1

        return Mark()

    def pin(self, nbytes):
        self.pinned.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)


def parking(driver):
    return Parking(driver.lock, driver.unlock, driver.pin, driver.mark)


class FromGpu(torch.Tensor):
    """A CPU tensor that says it is on CUDA: what parking copies from, on a CPU-only torch."""

    @property
    def device(self):
        return torch.device("cuda")


def gpu(t):
    return t.as_subclass(FromGpu)


def test_buffers_have_exact_sizes_and_serve_the_next_call():
    driver = Driver()
    p = parking(driver)
    a, b = gpu(torch.randn(1, 3, 5, 7)), gpu(torch.randn(2, 3, 5, 7, dtype=torch.bfloat16))
    first = [p.park(a), p.park(b)]
    assert torch.equal(first[0], a) and torch.equal(first[1], b)
    assert first[1].dtype == torch.bfloat16 and first[1].shape == b.shape
    assert p.bytes == p.peak == a.nbytes + b.nbytes  # not rounded up to powers of two
    ptrs = [t.data_ptr() for t in first]
    p.recycle()
    again = [p.park(b * 2), p.park(a * 3)]  # same sizes, any order: the same buffers
    assert sorted(t.data_ptr() for t in again) == sorted(ptrs)
    assert torch.equal(again[0], b * 2) and torch.equal(again[1], a * 3)
    assert p.bytes == a.nbytes + b.nbytes and len(driver.locked) == 2
    bigger = p.park(gpu(torch.ones(4, 4)))  # nothing idle of this size: a new buffer
    assert bigger.data_ptr() not in ptrs and len(driver.locked) == 3
    p.close()
    assert sorted(driver.unlocked) == sorted(driver.locked) and p.bytes == 0


def test_a_buffer_is_not_handed_out_twice_in_one_call():
    p = parking(Driver())
    x = gpu(torch.randn(8))
    one, two = p.park(x), p.park(x + 1)
    assert one.data_ptr() != two.data_ptr() and torch.equal(one, x)


def test_when_the_driver_refuses_torch_pinned_memory_is_used():
    driver = Driver(refuse=True)
    p = parking(driver)
    x = gpu(torch.randn(3, 4))
    assert torch.equal(p.park(x), x)
    assert driver.pinned == [x.nbytes] and p.fallback
    p.park(x)
    assert driver.pinned == [x.nbytes] * 2  # no second try at locking
    p.close()
    assert driver.unlocked == []


def test_a_refused_registration_leaves_no_error_for_the_next_kernel(monkeypatch):
    """CUDA keeps a failed call's error until cudaGetLastError reads it, and torch's next
    launch check (which reads it) would blame its own kernel: the lock has one read it first."""
    last_error, real_empty = [], torch.empty

    class Cudart:
        def cudaHostRegister(self, ptr, nbytes, flags):
            last_error.append(2)  # cudaErrorMemoryAllocation
            return 2

    def launch(*args, **kwargs):  # a kernel whose launch check reads and clears the error
        if last_error:
            last_error.clear()
            raise RuntimeError("CUDA error: out of memory")
        return real_empty(*args, **{**kwargs, "device": "cpu"})

    t = torch.zeros(4)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: Cudart())
    monkeypatch.setattr(torch, "empty", launch)
    assert parking_module.cuda_lock(t) is False
    assert last_error == []


def test_maps_from_other_devices_are_plain_copies():
    driver = Driver()
    p = parking(driver)
    x = torch.randn(3)  # MPS, say: nothing to lock
    assert torch.equal(p.park(x), x) and driver.locked == [] and p.bytes == 0


def test_meta_maps_are_counted_per_call():
    p = parking(Driver())
    x = torch.empty(2, 320, 64, 64, dtype=torch.bfloat16, device="meta")
    p.park(x)
    p.park(x)
    p.recycle()
    p.park(x)
    assert p.peak == 2 * x.nbytes and p.bytes == x.nbytes


@pytest.fixture(scope="module")
def meta_unet():
    """Built once for the cases below (a replay leaves the model as it found it: test_costs
    replays one UNet under every strategy)."""
    return memsim.sdxl_unet_on_meta()


@pytest.fixture(scope="module")
def meta_controlnet():
    return memsim.sdxl_controlnet_on_meta()


@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize("strategy", [
    Strategy(park_skips=True),
    Strategy(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True,
             weights="sequential"),
], ids=lambda s: s.label if isinstance(s, Strategy) else None)
def test_planner_counts_what_a_call_parks(request, meta_unet, strategy, control):
    """Full SDXL with LinFusion (and an SDXL ControlNet) on meta, a 768x1280 px latent."""
    unet = meta_unet
    net = request.getfixturevalue("meta_controlnet") if control else None
    seen = []
    original = Parking.close

    def close(self):
        seen.append(self.peak)
        original(self)

    Parking.close = close
    try:
        memsim.unet_call_peak(unet, 96, 160, strategy, controlnet=net)
    finally:
        Parking.close = original
    shape = sdxl_shape(controlnet=control)
    assert seen == [parked_bytes(shape, 96, 160, strategy)] and seen[0] > 0


def test_applied_parks_nothing_on_a_cpu(tiny):
    with applied(tiny.unet, Strategy(park_skips=True), torch.device("cpu")) as parking:
        assert parking is None


def test_the_cpu_reads_a_parked_band_only_once_its_copy_has_landed():
    """A band of rows is strided, so torch reads it on the CPU: `settle` waits for the copy."""
    from hires import parking as parking_module
    from hires.lean import Stacked

    driver = Driver()
    p = parking(driver)
    x = gpu(torch.randn(1, 2, 6, 3))
    token = parking_module.current.set(p)
    try:
        parked = p.park(x).as_subclass(torch.Tensor)
        assert parked.device.type == "cpu" and driver.marks == 1
        assert getattr(driver, "waited", 0) == 0
        band = Stacked([parked], device=torch.device("meta")).rows(2, 4)
        assert band.shape == (1, 2, 2, 3) and driver.waited == 1
        Stacked([parked], device=torch.device("meta")).rows(0, 2)  # landed: no second wait
        assert driver.waited == 1
    finally:
        parking_module.current.reset(token)
        p.close()


def test_a_buffer_written_band_by_band_is_exact_and_reused():
    p = parking(Driver())
    one = p.empty((1, 4, 5, 6), torch.bfloat16, torch.device("cuda"))
    assert one.shape == (1, 4, 5, 6) and one.dtype == torch.bfloat16
    assert p.bytes == one.nbytes
    p.recycle()
    again = p.empty((2, 2, 5, 6), torch.bfloat16, torch.device("cuda"))  # same bytes
    assert again.data_ptr() == one.data_ptr() and p.bytes == one.nbytes
    p.close()


def test_maps_past_the_ram_cap_wait_in_files_whose_names_are_gone(tmp_path):
    """The plan's RAM cap: buffers past it are files on the scratch disk, not page-locked."""
    driver = Driver()
    p = Parking(driver.lock, driver.unlock, driver.pin, driver.mark, ram=200, disk=str(tmp_path))
    a, b, c = (gpu(torch.randn(25) + i) for i in range(3))  # 100 bytes each
    parked = [p.park(x) for x in (a, b, c)]
    assert all(torch.equal(t, x) for t, x in zip(parked, (a, b, c), strict=True))
    assert len(driver.locked) == 2 and p.on_disk == 100 and p.bytes == 300
    storage = parked[2].untyped_storage()
    assert storage.filename and str(tmp_path) in storage.filename
    assert list(tmp_path.iterdir()) == []  # nothing left behind, even while mapped
    p.recycle()
    again = [p.park(x * 2) for x in (a, b, c)]  # the same three buffers, no new file
    assert p.on_disk == 100 and p.bytes == 300
    assert all(torch.equal(t, x * 2) for t, x in zip(again, (a, b, c), strict=True))
    p.close()
    assert p.on_disk == p.bytes == 0 and sorted(driver.unlocked) == sorted(driver.locked)


def test_without_a_folder_the_cap_does_not_apply():
    driver = Driver()
    p = Parking(driver.lock, driver.unlock, driver.pin, driver.mark, ram=10)
    p.park(gpu(torch.randn(25)))
    assert p.on_disk == 0 and len(driver.locked) == 1


def test_a_full_scratch_disk_is_a_message_not_a_crash(tmp_path, monkeypatch):
    """Blocks are reserved before the GPU writes into them: no SIGBUS on a full disk."""
    import errno
    import os

    from hires.output import OutputError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    p = Parking(*(lambda d: (d.lock, d.unlock, d.pin, d.mark))(Driver()), ram=0,
                disk=str(tmp_path))
    with pytest.raises(OutputError, match=r"no room in .* for 0\.0 GB of parked maps .*TMPDIR"):
        p.park(gpu(torch.randn(4)))
    assert list(tmp_path.iterdir()) == []


def test_applied_hands_the_plans_disk_cap_to_its_parking(tiny, monkeypatch, tmp_path):
    from hires import strategy as strategy_module

    monkeypatch.setattr(strategy_module, "scratch_folder", lambda: str(tmp_path))
    cuda = torch.device("cuda")
    with applied(tiny.unet, Strategy(park_skips=True), cuda, disk_after=123) as parking:
        assert parking.ram == 123 and parking.disk == str(tmp_path)
    with applied(tiny.unet, Strategy(park_skips=True), cuda) as parking:
        assert parking.disk is None


def test_a_file_whose_name_cannot_go_while_mapped_goes_at_close(tmp_path, monkeypatch):
    """Windows keeps a mapped file's name: the file is removed once its buffer is freed."""
    import os

    real = os.unlink
    mapped = []

    def unlink(path):
        if path not in mapped:  # the first try, while mapped
            mapped.append(path)
            raise PermissionError(13, "in use")
        real(path)

    monkeypatch.setattr(os, "unlink", unlink)
    driver = Driver()
    p = Parking(driver.lock, driver.unlock, driver.pin, driver.mark, ram=0, disk=str(tmp_path))
    x = gpu(torch.randn(10))
    assert torch.equal(p.park(x), x)
    assert len(list(tmp_path.iterdir())) == 1 and p.left
    p.close()
    assert list(tmp_path.iterdir()) == [] and p.left == []
