"""Batch jobs: reading TOML/JSONL job files, sharding across processes, resumable runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires.job import Job, JobError
from hires.presets import load_preset, read_toml


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch file: its index in the file, the job, and where its image goes."""

    index: int
    job: Job
    output: str | None


def read_batch(path: str | Path, base: Job | None = None) -> list[BatchItem]:
    """Jobs from a TOML file ([defaults] + [[job]]) or JSONL (one object a line)."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"batch file not found: {path}")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        defaults, entries = {}, list(_jsonl(path))
    else:
        data = read_toml(path)
        unknown = set(data) - {"defaults", "job"}
        if unknown:
            raise JobError(f"{path}: unknown table '{sorted(unknown)[0]}'; "
                           "a batch file has [defaults] and [[job]] entries")
        defaults, entries = data.get("defaults", {}), data.get("job", [])
    if not entries:
        raise JobError(f"{path} holds no jobs; add [[job]] entries (TOML) or lines (JSONL)")
    base = base or Job()
    items = []
    for i, entry in enumerate(entries):
        values = {**defaults, **entry}
        output = values.pop("output", None)
        where = f"{path.name} job {i + 1}"
        job = base
        if "preset" in values:
            job = job.merged(load_preset(str(values.pop("preset"))).values, where=where)
        job = job.merged(values, where=where).validate()
        if job.seed is None:
            job = job.merged({"seed": stable_seed(i, values)})
        items.append(BatchItem(i, job, output))
    return items


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise JobError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(entry, dict):
                raise JobError(f"{path} line {n}: each line must be a JSON object")
            yield entry


def stable_seed(index: int, values: dict[str, Any]) -> int:
    """A seed fixed by the job's place and content, so a restarted batch finds its outputs."""
    text = json.dumps([index, values], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def parse_shard(shard: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world) from `--shard I/N`, else torchrun/accelerate's RANK and WORLD_SIZE."""
    env = os.environ if env is None else env
    if shard:
        try:
            i, n = (int(p) for p in shard.split("/", 1))
        except ValueError:
            raise JobError(f"--shard must look like I/N (e.g. 0/4), got '{shard}'") from None
        if n < 1 or not 0 <= i < n:
            raise JobError(f"--shard {shard}: need 0 <= I < N")
        return i, n
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise JobError("RANK/WORLD_SIZE in the environment are not numbers") from None
    return rank, max(world, 1)


def local_device(env: dict[str, str] | None = None) -> str | None:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return None


def my_share(items: list[BatchItem], rank: int, world: int) -> list[BatchItem]:
    """Every world-th job starting at rank: shards are disjoint and cover every job."""
    return [item for item in items if item.index % world == rank]


@dataclass
class Outcome:
    """What happened to one batch job."""

    item: BatchItem
    status: str  # "done" | "skipped" | "failed"
    path: Path
    error: str | None = None
    record: dict[str, Any] | None = None


def run_batch(
    items: list[BatchItem],
    resolve_path: Callable[[BatchItem], Path],
    make: Callable[[BatchItem, Path], dict[str, Any]],
    manifest: Path | None = None,
    overwrite: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run each job unless its output exists; one failure does not stop the others.

    `make(item, path)` generates and saves one image and returns its record.
    """
    from hires.output import append_manifest

    outcomes = []
    for item in items:
        path = resolve_path(item)
        if path.exists() and not overwrite:
            outcome = Outcome(item, "skipped", path)
        else:
            try:
                outcome = Outcome(item, "done", path, record=make(item, path))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a failed job is reported; the batch goes on
                outcome = Outcome(item, "failed", path, error=str(e).splitlines()[0][:500]
                                  if str(e) else type(e).__name__)
        if manifest is not None:
            append_manifest(manifest, {"index": item.index, "status": outcome.status,
                                       "path": str(path), "error": outcome.error,
                                       **(outcome.record or {})})
        if on_outcome:
            on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes
