"""What every command shares: the Typer app, the consoles, the one-line user errors and the exits of a stopped run.

Errors in user input (flags, config files, run folders) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from synthsae import distributed
from synthsae.config import ConfigError
from synthsae.fileio import BadFileError
from synthsae.metrics_file import MetricsError
from synthsae.rundir import is_run_folder, run_lock

HELP = "Seed dependence in sparse autoencoders: train SAEs under many seeds, measure which latents come back."

# Without a terminal rich would wrap at 80 columns, splitting paths and commands: use the full line instead.
console = Console(width=None if sys.stdout.isatty() else 1000)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)


def new_app(help: str) -> typer.Typer:
    """A command group with the house settings: plain click help (flags shown as flags, no box drawing in a pipe)."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


def log(message: str) -> None:
    """A library progress line on stdout, as it is (no rich highlighting)."""
    console.print(message, highlight=False)


class UserError(Exception):
    """Bad input from the user (a flag, a file, a folder): reported in one line, exit code 2."""


def user_errors(fn: Callable) -> Callable:
    """Turn ConfigError / UserError / bad files / OS errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            # torchrun: the ranks leave the command together (then synthsae/__main__.py skips the C++ teardown)
            distributed.barrier("end of the command")
            return result
        except (ConfigError, UserError, BadFileError, MetricsError, OSError) as exc:
            if isinstance(exc, OSError) and exc.strerror and exc.filename and len(exc.args) == 2:
                msg = f"{exc.filename}: {exc.strerror}"  # e.g. PermissionError from a write deep in the library
            else:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not (isinstance(exc, (ConfigError, UserError)) and distributed.env_world().rank != 0):
                typer.echo(f"error: {msg}", err=True)  # plain echo: rich would wrap a long line; torchrun: rank 0 says it
            raise typer.Exit(code=2) from None
        except distributed.PeerLost as exc:  # torchrun: another rank died; this one stops with one line
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        finally:
            distributed.teardown()

    return wrapper


def print_version(value: bool) -> None:
    """--version: the installed package's version, then exit."""
    if value:
        try:
            typer.echo(f"synthsae {version('synthsae')}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
            typer.echo("synthsae (not installed)")
        raise typer.Exit()


def check_device(device: str) -> None:
    """--device of the analysis commands: auto, cpu, cuda or cuda:N (the trainer's own check covers train / run)."""
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device = {device!r}: must be auto, cpu, cuda or cuda:N")


def diverged_exit(exc, command: str, out: Path) -> None:
    """One line on stderr for a diverged training (what happened, the last good state, how to go on); exit 1."""
    lower = f"{exc.lr / 2:g}" if exc.lr else "LOWER_LR"
    how = "continues from it" if exc.checkpoint_step is not None else "starts training again"
    typer.echo(f"error: {exc}; `synthsae {command} --resume --out {out} --lr {lower}` {how} with half the learning rate",
               err=True)
    raise typer.Exit(code=1)


def interrupted_exit(command: str, out: Path) -> None:
    """Ctrl-C during a run: where the progress is and the command that finishes it; exit 130."""
    typer.echo(f"interrupted (progress is kept in {out}): `synthsae {command} --resume --out {out}` finishes the run",
               err=True)
    raise typer.Exit(code=130)


def stopped_exit(hint: str) -> None:
    """Ctrl-C in a command that resumes by itself (real run, bench, sweep): `interrupted: <hint>`; exit 130."""
    err_console.print(f"interrupted: {hint}")
    raise typer.Exit(code=130)


def existing_run(run_dir: Path) -> Path:
    """run_dir when it holds a metrics.json (a run something can be reported from); a UserError otherwise."""
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"RUN_DIR = {str(run_dir)!r}: no metrics.json there (not a finished run?)")
    return run_dir


def report_lock(run_dir: Path) -> AbstractContextManager:
    """The run's lock for a report of a run folder (an analysis folder of SAE folders gets no run marker)."""
    return run_lock(run_dir) if is_run_folder(run_dir) or (run_dir / "real_config.json").is_file() else nullcontext()
