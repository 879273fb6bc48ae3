"""What SDXL reads of a prompt: 77 tokens a text encoder, its start and end marks among them;
diffusers drops the rest. Said before a run from the loaded model's tokenizer, and before a dry
run from the tokenizer in the local cache, when it is there (no download for a dry run)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from hires.job import DEFAULT_MODEL, Job


def too_long(tokenizer: Any, job: Job) -> list[str]:
    """A warning for the prompt and for the negative prompt that pass what the encoders read,
    naming the word where the cut falls."""
    room = tokenizer.model_max_length - 2
    said = []
    for name, text in (("prompt", job.prompt), ("negative prompt", job.negative)):
        tokens = tokenizer.tokenize(text) if text else []
        if len(tokens) > room:
            dropped = " ".join(text[_cut(tokenizer, text, room):].split())  # one line
            dropped = dropped if len(dropped) <= 40 else dropped[:40].rstrip() + "..."
            said.append(f"the {name} is {len(tokens)} tokens and SDXL reads {room}: the rest, "
                        f"from '{dropped}', is ignored; shorten it")
    return said


def _cut(tokenizer: Any, text: str, room: int) -> int:
    """Where in the user's own text the encoders stop reading: the start of the word the limit
    falls in, or of the character in a long run without spaces. Quoted from the text, not the
    tokenizer's decoding, which is lower-cased and spaced ("word 1 4" for "Word14")."""
    def passes(end: int) -> bool:
        return len(tokenizer.tokenize(text[:end])) > room

    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    lo, hi = 0, len(words) - 1  # the first word whose end passes the limit (the last does)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(words[mid][1]) else (mid + 1, hi)
    start, end = words[lo]
    if end - start <= 40:
        return start
    lo, hi = start + 1, end  # a long run (CJK, emoji, tags): the first character that passes
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid + 1, hi)
    cut = lo - 1
    while cut > start and unicodedata.category(text[cut]) in ("Mn", "Me", "Cf"):
        cut -= 1  # a combining mark, a joiner: from the letter it goes with
    tag = max(text.rfind(mark, start, cut) for mark in ",;|")  # "best_quality,ultra_..."
    return tag + 1 if tag >= start else cut


def cached_tokenizer(job: Job) -> Any | None:
    """The job's model's first tokenizer from the tiny model or the local cache, without a
    download; None when it is not there, or when no prompt could be too long (a token is at
    least one byte, so 75 bytes are at most 75 tokens: transformers is not imported)."""
    if all(len(text.encode()) <= 75 for text in (job.prompt, job.negative)):
        return None
    try:
        if job.model == "tiny":
            from hires.tiny import tiny_tokenizer

            return tiny_tokenizer()
        folder = _tokenizer_folder(job.model)
        if folder is None:
            return None
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(folder)
    except Exception:  # not a model's: the run says what is wrong
        return None


def _tokenizer_folder(model: str) -> Path | None:
    """Where the model's tokenizer files are on this machine, or None. Found, not asked of
    transformers: offline, it makes an empty tokenizer of a repository it has never seen."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(model).expanduser()
    if path.is_dir():
        folder = path / "tokenizer"
    else:  # a Hub id; a single file's pipeline is read with SDXL base's tokenizers
        repo = DEFAULT_MODEL if path.is_file() else model
        found = [try_to_load_from_cache(repo, f"tokenizer/{name}")
                 for name in ("tokenizer.json", "vocab.json")]
        cached = [f for f in found if isinstance(f, str)]
        if not cached:
            return None
        folder = Path(cached[0]).parent
    # the fast tokenizer's one file (as transformers 5 saves it), or the slow one's two
    whole = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
    return folder if whole else None
