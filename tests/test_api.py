"""The public API in synthsae/__init__.py: lazy names, and the README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import synthsae

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_names_resolve_and_unknown_names_fail() -> None:
    import importlib.util
    import inspect

    for name in synthsae.__all__:
        assert getattr(synthsae, name) is not None
        if name != "__version__":  # a submodule of the same name would shadow the function once imported
            assert importlib.util.find_spec(f"synthsae.{name}") is None, name
            assert not inspect.ismodule(getattr(synthsae, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        synthsae.nope  # noqa: B018


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"mean stability 0\.\d{3} \(null 0\.\d{3}\)", out)
    cfg = synthsae.preset("tiny")
    assert "Stability distribution: " in out
    assert out.strip().endswith(f"{cfg.train.seeds} {len(cfg.truth.subspace_ranks)} True")  # every seed, every block
    assert (tmp_path / "runs" / "api-demo" / "metrics.json").is_file()
