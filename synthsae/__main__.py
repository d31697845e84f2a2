"""`python -m synthsae ...` = the `synthsae` command (also what `torchrun ... -m synthsae train|run` starts per rank)."""

import sys

from cli import app

if __name__ == "__main__":
    sys.exit(app(prog_name="synthsae"))
