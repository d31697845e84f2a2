"""`python -m synthsae ...` = the `synthsae` command (also what `torchrun ... -m synthsae train|run` starts per rank)."""

import os
import sys

from synthsae.cli import app


def main() -> int:
    """Run the CLI; under torchrun, leave with os._exit once the command is done and its output flushed.

    With torch 2.13 + gloo on this 2-core machine, about 1 torchrun run in 5 had a rank die *after* the command had
    finished and written everything ("terminate called without an active exception" / SIGSEGV while the interpreter
    tore down C++ objects), which torchrun reports as a failed run. Skipping that teardown is the usual remedy.
    """
    try:
        app(prog_name="synthsae")
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = int(exc.code or 0)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
