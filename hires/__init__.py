"""hires: ultra-high-resolution images from a text prompt with SDXL + LinFusion on one GPU."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"
__all__ = ["Job", "JobError", "Result", "generate", "load", "upscale", "__version__"]


def main() -> None:
    """The `hires` command. Its CLI is imported here, inside the Ctrl-C handling: a Ctrl-C in
    the first moments (while typer, rich and the rest load) is a quiet exit 130 too."""
    try:
        from hires.cli import main as cli_main
    except KeyboardInterrupt:
        try:
            print("interrupted", file=sys.stderr)
        except OSError:  # stderr takes no more (2>/dev/full): the exit code says it
            pass
        raise SystemExit(130) from None
    cli_main()


class _Package(types.ModuleType):
    """The package's public names, imported on first use: `import hires` (and `hires --help`)
    must not pay torch's import time.

    `hires.upscale` is the function, always: the submodule of that name would take the
    attribute over as it loads (the import system sets a package's attribute to its newly
    loaded submodule), and `hires.upscale(...)` then failed from its second call on.
    """

    @property
    def Job(self) -> type:  # noqa: N802 (the class's name)
        from hires.job import Job

        return Job

    @property
    def JobError(self) -> type:  # noqa: N802 (the class's name)
        from hires.job import JobError

        return JobError

    @property
    def Result(self) -> type:  # noqa: N802 (the class's name)
        from hires.pipeline import Result

        return Result

    @property
    def generate(self) -> Callable[..., Any]:
        from hires.pipeline import generate

        return generate

    @property
    def load(self) -> Callable[..., Any]:
        from hires.library import library_load

        return library_load

    @property
    def upscale(self) -> Callable[..., Any]:
        from hires.upscale import upscale

        return upscale

    @upscale.setter
    def upscale(self, module: types.ModuleType) -> None:  # that import's setattr: not taken
        pass

    def __dir__(self) -> list[str]:
        """The lazy names too: a property of the class is no key of the module's dict."""
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = _Package
