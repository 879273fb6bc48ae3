"""What the library's callers may pass, checked before any work: the arguments of
`hires.generate`, `hires.upscale` and `hires.load`, and their errors in the keywords' words."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import Any

import torch

from hires.job import DEFAULT_MODEL, Job
from hires.models import Components, load
from hires.plan import Plan, PlanError
from hires.sizes import sized_by_print

# A command's flag (or a batch file's key) given as a keyword: what a library caller does
# instead. `{value!r}` is the value given. No flags here: `in_keywords` rewrites '--x' as 'x'.
LIBRARY_ADVICE = {
    "n": "each call makes one image: call it once a seed (seed=...), with the components "
         "from hires.load(...) loaded once",
    "scale": "scale multiplies an input image's size: it is for hires.upscale(image, "
             "scale=...); give size (the long side) instead",
    "preset": "presets are for the command line and batch files; pass a preset's settings as "
              "keywords, yours over them: **{{**hires.presets.load_preset({value!r}).values, "
              "'steps': 30}} (for a size of yours, leave out the preset's size, aspect, width, "
              "height and print_size)",
    "on_score": "on_score is hires.upscale's (each stage's PSNR against the input image); "
                "hires.generate(..., image=...) upscales and takes it too",
    "output": "the call returns the image: result.save(path) writes it",
    "from": "pass job=hires.Job.from_dict(hires.output.job_values_from_image(path)), the job "
            "an image of hires records",
    "preview": "on_stage_image=lambda index, image: ... gets each stage's image as it is made",
    "overwrite": "give it to the save: result.save(path, overwrite=True)",
    "resume": "pass checkpoint=PATH (hires.resume.path_for(output)): a run of the same job goes "
              "on after its last finished stage",
    "dry_run": "hires.pipeline.plan_for(job, components) makes the plan without running it",
    "gpu": "hires.pipeline.plan_for(job, components, gpu=...) prices the plan for that card",
    "json": "result.save(path) returns the image's record",
    "quiet": "the library writes no log (its warnings are Python's: the warnings module "
             "filters them); progress=... hears its events",
    "shard": "share your jobs out yourself (jobs[rank::world])",
    "manifest": "keep what result.save(path) returns: each image's record",
}


def check_keywords(overrides: dict[str, Any]) -> None:
    """A command's flag or a batch file's key given as a keyword (n=2, preset='draft') is
    told what the library does instead; closest_hint's 'did you mean' misled ('prompt')."""
    from hires.job import JOB_KEYS, JobError

    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if name not in JOB_KEYS and name.lower() in LIBRARY_ADVICE:
            advice = LIBRARY_ADVICE[name.lower()].format(value=value)
            raise JobError(f"unknown keyword {key}=: {advice}")


# The keywords `generate` takes in its **overrides besides Job's fields (library_job's sizes)
SIZE_KEYWORDS = ("size", "aspect", "print_size")


def check_known(function: Any, overrides: dict[str, Any], *also: Any) -> None:
    """An unknown keyword is said before anything else is checked, the closest of every
    keyword `function` (and the functions `also`, where it hands over: generate to upscale)
    takes named, its own and Job's fields: `sise=` was told 'seed' (Job's fields alone), and
    an upscale's `scael=` was a missing size. A command's flag (n=) is told what to do
    instead (`check_keywords`)."""
    from hires.job import JOB_KEYS, JobError, keys_for_people

    own = [n for f in (function, *also) for n, p in inspect.signature(f).parameters.items()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    valid = keys_for_people([*own, *JOB_KEYS, *SIZE_KEYWORDS])
    for key in overrides:
        name = str(key)
        flag = name.replace("-", "_").lower()
        if name in own or name in JOB_KEYS or name in SIZE_KEYWORDS:
            continue
        if flag in LIBRARY_ADVICE and flag not in valid:  # 'Scale' in upscale is a slip
            if overrides[key] is None:  # a script's unset option passed through: not given
                continue
            check_keywords({key: overrides[key]})  # n=2: what the library does instead
        raise JobError(f"unknown keyword {key}= ({keyword_hint(flag, valid)})")


def keyword_hint(name: str, valid: list[str]) -> str:
    """'did you mean steps=?' for the closest of the `valid` keywords, else all of them."""
    import difflib

    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"did you mean {match[0]}=?" if match else f"valid: {', '.join(valid)}"


def check_arguments(plan: Any, checkpoint: Any) -> None:
    """`plan` and `checkpoint` of the kinds they must be, before any work (a wrong one failed
    deep inside, with an AttributeError or pathlib's TypeError); the checkpoint a file that
    can be written (`hires.resume.check_path`)."""
    if plan is not None and not isinstance(plan, Plan):
        raise TypeError(f"plan must be a hires.plan.Plan (from hires.pipeline.plan_for), got "
                        f"{type(plan).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file's path (str or Path), got "
                        f"{type(checkpoint).__name__}")
    if checkpoint is not None:
        from hires.output import OutputUsage
        from hires.resume import check_path

        if not os.fspath(checkpoint).strip():  # "" ran with none (an unset variable?)
            raise OutputUsage("checkpoint is empty: give a file's path, e.g. "
                             "hires.resume.path_for('out.png'), or leave it out")
        check_path(Path(checkpoint))


def check_flags(**flags: Any) -> dict[str, bool]:
    """A library call's switches that are not job settings (`save_stages`, a save's
    `overwrite`), True or False before any work: "no" is truthy, and `overwrite="no"` wrote
    over the file. numpy's bools count as bools; None is not given (False), as for any
    setting. Returns them as bools."""
    from hires.job import plain_number

    checked = {}
    for name, value in flags.items():
        value = False if value is None else plain_number(value)
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        checked[name] = value
    return checked


def keyword_words(text: str) -> str:
    """A message worded with flags, in the library's keywords; a setting's check worded for a
    job ("'model' in the job must be text"), as the keyword it was given as."""
    from hires.images import without_shell_advice

    said = re.sub(r"'(\w+)' in (?:the )?job ", r"\1 ", text)
    said = re.sub(r"--allow-pickle\b", "allow_pickle=True", said)  # as ModelError says it
    said = said.replace("hires up makes images larger", "an upscale makes images larger")
    said = said.replace("upscale the new file with hires up", "upscale the new file: "
                        "hires.upscale(path, ...) without job=")
    said = without_shell_advice(said, "a call for each")  # no shell reads a call's paths
    # A flag is a word of its own: a name's '--' (my--style.safetensors, ./--x.safetensors,
    # a Hub cache's models--x--y) is left as it is.
    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)(?![\w\\-]|\.\w)",
                  lambda m: m.group(1).replace("-", "_"), said)


def keyword_notes(warnings: list[str]) -> list[str]:
    """A run's warnings that name the job's own flags (worded for the CLI's log and record),
    in the library's keywords: 'depth=16', 'vae_dtype fp32'."""
    said = [w.replace("(--depth 16 for 16)", "(depth=16 for 16)") for w in warnings]
    return [keyword_words(w) if w.startswith("--depth 16 with the VAE") else w for w in said]


def plan_arguments(job: Any, components: Any, gpu: Any) -> str | None:
    """`plan_for`'s arguments of the kinds they must be (a dict as the job failed deep inside,
    with an AttributeError); `gpu` as the planner reads it: a card's name, or a TFLOP/s figure
    as text or a number, checked here."""
    from hires.gpus import rate_for
    from hires.job import plain_number

    if not isinstance(job, Job):
        raise TypeError(f"job must be a hires.Job (hires.Job(prompt=..., width=..., "
                        f"height=...)), got {type(job).__name__}")
    if not isinstance(components, Components):
        raise TypeError(f"components must be what hires.load(...) returns, got "
                        f"{type(components).__name__}")
    if gpu is None:
        return None
    value = plain_number(gpu)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"gpu must be a card's name ('4090') or a TFLOP/s figure (350), got "
                        f"{type(gpu).__name__}")
    if not isinstance(value, str):  # 350.0 as "350"; 10**400 as "inf", not 401 digits
        try:
            value = f"{float(value):g}"
        except OverflowError:
            value = "inf"
    try:
        rate_for(value)
    except ValueError as e:  # worded for --gpu
        raise ValueError(keyword_words(str(e))) from None
    return value


@contextmanager
def in_keywords() -> Iterator[None]:
    """A library call's JobError and ModelError name its keywords, not the CLI's flags that the
    shared checks name: 'aspect needs size', not '--aspect needs --size'; 'allow_pickle=True',
    not '--allow-pickle'."""
    from hires.errors import NotFinite
    from hires.images import ImageInputError
    from hires.job import JobError
    from hires.model_refs import ModelError
    from hires.models import in_library_terms

    try:
        yield
    except JobError as e:
        raise JobError(keyword_words(str(e))) from None
    except ImageInputError as e:  # a folder's advice is a shell's glob
        raise ImageInputError(keyword_words(str(e))) from None
    except (ModelError, NotFinite) as e:
        raise in_library_terms(e) from None
    except PlanError as e:  # with the size that would fit, as the CLI says it
        raise fitted(e) from None


def fitted(error: PlanError) -> PlanError:
    """`error` with the size at its aspect whose plan fits, in keywords: a script can take it;
    a job sized by a print size is told the dpi at which that print fits instead; and the
    keyword whose budget was too small (`vram=`, or on a CPU the smaller of it and `ram=`)."""
    from hires.plan import cpu_budget_flag, fitting_print, fitting_size, whole_job_need

    fits, need = fitting_size(error), whole_job_need(error)
    model, job = (error.plan_kwargs or {}).get("model"), error.job
    flag = None
    if job is not None and not error.host and model is not None:
        flag = cpu_budget_flag(job.vram, job.ram) if not model.on_gpu else \
            "vram" if job.vram is not None else None
    larger = f"; or a larger {flag}=" if flag else ""
    if fits is None and not need and not larger:
        return error
    printed = job is not None and "print_size" in job.extra
    found = fitting_print(job, error) if printed and fits else None
    if fits is None:
        text = f"{error}{need}"
    elif found is not None:  # a print's maker lowers the dpi, not the pixels
        dpi, (w, h) = found
        text = f"{error}{need}; the print_size fits at dpi={dpi} ({w}x{h})"
    elif printed:
        text = (f"{error}{need}; the print_size fits at no whole dpi: a smaller print_size "
                f"({fits[0]}x{fits[1]} px fits)")
    else:
        text = f"{error}{need}; {fits[0]}x{fits[1]} fits (width={fits[0]}, height={fits[1]})"
    said = PlanError(text + larger)
    said.host, said.plan_kwargs, said.size = error.host, error.plan_kwargs, error.size
    said.job, said.needed, said.host_needed = error.job, error.needed, error.host_needed
    return said


@wraps(load)
def library_load(*args: Any, **kwargs: Any) -> Components:
    """`hires.load`: `hires.models.load`, its errors naming the keywords (model=, not
    --model). The model by position, the rest by keyword: `load("tiny", "cpu")` loaded "cpu"
    as the LinFusion checkpoint."""
    names = list(inspect.signature(load).parameters)
    if len(args) > 1:
        raise TypeError(f"load() takes the model by position and the rest by keyword "
                        f"({names[1]}=..., device=...): got {len(args)} positional arguments")
    for key in kwargs:
        if key not in names:
            raise TypeError(_not_loads(str(key), names))
    with in_keywords():  # load checks its arguments as a job's: 'model' in the job
        return load(*args, **kwargs)


def _not_loads(key: str, names: list[str]) -> str:
    """What to say of `key=` given to load, which takes `names`: another call's keyword (lora=,
    or a misspelling of one: lroa=) is said to be that call's, not 'did you mean offload='."""
    import difflib

    from hires.job import JOB_KEYS
    from hires.pipeline import generate
    from hires.upscale import upscale

    made = [n for f in (generate, upscale) for n, p in inspect.signature(f).parameters.items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD and n not in ("job", "image")]
    only_up = [n for n in inspect.signature(upscale).parameters  # scale, on_score
               if n not in (*inspect.signature(generate).parameters, *JOB_KEYS, *SIZE_KEYWORDS)]
    theirs = list(dict.fromkeys([*JOB_KEYS, *SIZE_KEYWORDS, *made]))
    meant = key if key in theirs else next(iter(difflib.get_close_matches(
        key, [*names, *theirs], n=1, cutoff=0.5)), None)
    if meant is None or meant in names:
        return f"load() got an unknown keyword {key}= ({keyword_hint(key, names)})"
    got = f"{key}=" if meant == key else f"{key}= ({meant}=?)"
    if meant == "components":
        return (f"load() got {got}: load makes the components; pass what it returns to "
                "hires.generate(..., components=...) or hires.upscale")
    if meant in only_up:  # scale=: generate refuses it as upscale's
        return (f"load() got {got}, a setting of each upscale, not of the model: pass it to "
                f"hires.upscale(image, {meant}=...), with components=hires.load(...)")
    return (f"load() got {got}, a setting of each image, not of the model: pass it to "
            f"hires.generate(..., {meant}=...) or hires.upscale, with "
            "components=hires.load(...)")


# help() and editors show what it takes: the model by position, the rest by keyword (wraps
# copied load's signature, where each may be given by position)
library_load.__signature__ = inspect.signature(load).replace(parameters=[
    p if i == 0 else p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
    for i, p in enumerate(inspect.signature(load).parameters.values())])


def with_prompt(prompt: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides with a prompt given as the first argument; a second one is refused."""
    if "prompt" in overrides:
        raise TypeError("the prompt was given twice, as the first argument and as "
                        "prompt=...; give one")
    return {"prompt": prompt, **overrides}


def library_job(job: Job | str | None, overrides: dict[str, Any],
                components: Components | None = None, progress: Any = None) -> Job:
    """The Job a library call asks for, checked as the CLI checks its flags (TypeError for
    arguments of the wrong kind); with `components` and no model named, theirs, so that its
    record (and `--from`) names the model that ran. Call it inside `in_keywords()`, so that
    its errors name the keywords."""
    from hires.addons import check_inputs
    from hires.job import LOSSY_FORMATS, JobError, check_kind, idle_setting, size_from
    from hires.model_refs import check_given_paths
    from hires.output import format_problem

    if isinstance(job, str):
        job, overrides = Job(), with_prompt(job, overrides)
    if job is not None and not isinstance(job, Job):
        raise TypeError(f"job must be a hires.Job or a prompt, got {type(job).__name__}")
    if components is not None and not isinstance(components, Components):
        raise TypeError(f"components must be what hires.load(...) returns, got "
                        f"{type(components).__name__}; to name a model, pass model=...")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function of one hires.progress.Event, got "
                        f"{type(progress).__name__}")
    check_callback("progress", progress, "(event)")  # before the model loads, not after
    # its keywords checked (check_known); numpy's 256 is 256
    overrides = plain_numbers(given_only(overrides))
    for name, value in overrides.items():  # 256, not "256" or 256.0: as README says
        check_kind(name, value)
    refs = ("model", "vae", "linfusion")  # a Job's own fields too: Job(model=Path(...))
    check_given_paths({**({k: getattr(job, k) for k in refs} if job is not None else {}),
                       **{k: v for k, v in overrides.items() if k in refs}})
    printed = overrides.get("print_size")
    if printed is not None:  # as --print-size: a print at the dpi
        overrides = {**overrides, **print_size_overrides(overrides)}
    overrides.pop("print_size", None)
    sizes = {k: overrides.pop(k) for k in ("size", "aspect", "width", "height") if k in overrides}
    if sizes:  # as --size/--aspect and --width/--height: one pair or the other, whole
        w, h = size_from(sizes.get("size"), sizes.get("aspect"), sizes.get("width"),
                         sizes.get("height")) or (None, None)
        if w is None:
            raise JobError("give size (with aspect, if you like) or width and height")
        overrides = {**overrides, "width": w, "height": h}
    # 'none' drops the job's add-on, as --control none does a preset's (lora="none" too)
    from hires.sizes import switched_off

    if overrides.get("lora") == "none":
        overrides = {**overrides, "lora": ["none"]}
    overrides, dropped = switched_off(overrides)
    unset = Job()
    job = (job or Job()).merged({**{k: getattr(unset, k) for k in dropped}, **overrides})
    if components is not None and job.model == DEFAULT_MODEL and overrides.get("model") is None:
        # Not named: the loaded one. model=DEFAULT_MODEL named is checked against them.
        job = replace(job, model=components.model)
    if components is not None and job.vae is None and "vae" not in overrides:
        job = replace(job, vae=components.vae_ref)  # likewise the VAE they were loaded with
    if components is not None and components.linfusion is None and job.linfusion == "auto":
        job = replace(job, linfusion="none")  # what ran, so that --from runs it again
    job = job.validate()
    if not job.image and not job.prompt.strip():  # as `hires gen ""` is (job= too)
        raise JobError("give a prompt: generate('a lighthouse at dawn', ...) or prompt=...")
    # This call's print, not one a job passed in was made from (dpi= alone would not resize it)
    job = sized_by_print(job, printed)
    # Before any work: a 16-bit JPEG, say, failed only at the save.
    problem = format_problem(job.format, job.width, job.height, job.depth)
    if problem:
        # The depth named only where it is at fault (not a WebP's size), in keywords' words.
        why = (f" with depth={job.depth}" if format_problem(job.format, job.width, job.height)
               is None else "")
        problem = problem.replace("--depth 8", "depth=8").replace(
            " (it overrides a preset's or a recorded depth)", "")
        raise JobError(f"format={job.format!r}{why}: {problem}")
    if job.quality is not None and job.format not in LOSSY_FORMATS:
        raise JobError(f"format={job.format!r} with quality={job.quality}: quality applies to "
                       "jpg and webp; png and tiff are lossless")
    idle = idle_setting(job, {k for k, v in overrides.items() if v is not None})
    if idle:  # as the CLI's check_scale_flags: it would be ignored without a word
        key, lacks, needs = idle
        raise JobError(f"{key}={getattr(job, key)!r} {lacks}: add "
                       f"{' and '.join(f'{n}=...' for n in needs)}, or leave it out")
    if components is not None:
        _check_loaded(job, components)
    check_inputs(job)  # an add-on's image that is not there, before its weights load
    return job


def given_only(overrides: dict[str, Any]) -> dict[str, Any]:
    """The keywords a caller gave a value: None is not given (the default, or `job=`'s own), as
    an unset flag is, so that a script can pass its own unset options through (steps=None
    failed where size=None passed)."""
    return {name: value for name, value in overrides.items() if value is not None}


def plain_numbers(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with numpy's numbers as Python's int and float (`hires.job.plain_number`)."""
    from hires.job import plain_number

    return {name: plain_number(value) for name, value in values.items()}


def _check_loaded(job: Job, components: Components) -> None:
    """A job that names another model, dtype, device, LinFusion, VAE, VAE dtype or offload
    than `components` were loaded with would run theirs and record its own: refused, so an
    image's record says what ran."""
    from hires.errors import dtype_name  # in the keyword's words: 'fp32', not 'float32'
    from hires.job import JobError

    loaded = {"model": components.model, "dtype": dtype_name(components.dtype),
              "device": str(components.device), "linfusion": components.linfusion or "none",
              "vae": components.vae_ref, "vae_dtype": dtype_name(components.vae_dtype),
              "offload": components.offload}
    wrong = next((name for name in loaded if not _agrees(name, job, components)), None)
    if wrong:
        raise JobError(f"{wrong}={getattr(job, wrong)!r}, but the components were loaded with "
                       f"{wrong} {loaded[wrong]!r}: drop {wrong}=, or load them with it "
                       f"(hires.load({wrong}=...))")


def _agrees(name: str, job: Job, components: Components) -> bool:
    """Whether the job's `name` setting is what `components` were loaded with ('auto' is)."""
    from hires.memory import choose_offload
    from hires.model_refs import ModelError
    from hires.models import DTYPES, choose_vae_dtype

    asked = getattr(job, name)
    if name == "model":
        return _same_ref(asked, components.model)
    if name == "vae":
        have = components.vae_ref
        return asked == have or (asked is not None and have is not None
                                 and _same_ref(asked, have))
    if asked == "auto":
        return True
    if name == "dtype":
        return DTYPES[asked] == components.dtype
    if name == "device":
        want, have = torch.device(asked), components.device
        return want.type == have.type and (want.index or 0) == (have.index or 0)
    if name == "linfusion":  # 'none', or a checkpoint: the one mounted
        return (components.linfusion is None if asked == "none"
                else components.linfusion is not None and _same_ref(asked, components.linfusion))
    if name == "offload":
        return choose_offload(asked, components.device) == components.offload
    try:  # vae_dtype: what loading with it would choose here
        fp16_ok = components.vae.config.force_upcast is False
        return choose_vae_dtype(components.device, components.dtype, asked,
                                fp16_ok=fp16_ok) == components.vae_dtype
    except ModelError:  # fp16 for a VAE that overflows in it: not how they were loaded
        return False


def _same_ref(a: str, b: str) -> bool:
    """Two references to one model: the same text, or two paths to one file or folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_callback(name: str, fn: Any, args: str) -> None:
    """A library caller's callback (None or a function taking `args`), checked before any work:
    otherwise a wrong one fails only after the first stage is made."""
    if fn is None:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be a function of {args}, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(*args.strip("()").split(", "))
    except TypeError:
        them = "them" if "," in args else "it"
        raise TypeError(f"{name} is called with {args}: give a function that takes {them}"
                        ) from None
    except ValueError:  # some builtins have no signature to check: taken on trust
        pass


def print_size_overrides(overrides: dict[str, Any],
                         source: tuple[int, int] | None = None) -> dict[str, Any]:
    """A library call's `print_size` as width, height and the dpi it is priced at (300 unless
    `dpi` is given); `source`: an upscale's input size, fitted into the print."""
    from hires.job import JobError, check_kind
    from hires.sizes import PRINT_DPI, print_pixels

    others = [k for k in ("size", "aspect", "scale", "width", "height")
              if overrides.get(k) is not None]
    if others:
        raise JobError(f"print_size sets both sides: drop {' and '.join(others)}")
    check_kind("dpi", overrides.get("dpi"))
    dpi = PRINT_DPI if overrides.get("dpi") is None else overrides["dpi"]  # dpi=0 is refused
    w, h = print_pixels(overrides["print_size"], dpi, source)
    return {"width": w, "height": h, "dpi": dpi}
