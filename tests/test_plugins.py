"""Plug-ins under `synthsae.variants` are loaded lazily and one by one: a broken one (import fails, not an SAE
class, constructor raises) is named in one warning line and skipped; using it by name is a one-line error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import synthsae.sae as reg
from synthsae.config import ConfigError, SAEConfig, validate_sae

MODULE = textwrap.dedent('''
    from synthsae.sae.base import SAE

    class NotAnSAE:
        pass

    class Raising(SAE):
        def __init__(self, *a, **k):
            raise RuntimeError("plug-in constructor exploded")
''')
ENTRY_POINTS = textwrap.dedent('''
    [synthsae.variants]
    broken_import = synthsae_missing_module_xyz:Whatever
    not_sae = synthsae_badplugin:NotAnSAE
    raising = synthsae_badplugin:Raising
''')
NAMES = ("broken_import", "not_sae", "raising")


@pytest.fixture
def bad_plugins(tmp_path):
    (tmp_path / "synthsae_badplugin.py").write_text(MODULE)
    info = tmp_path / "synthsae_badplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthsae-badplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for n in NAMES:
        reg._REGISTRY.pop(n, None)
        reg._BROKEN.pop(n, None)
        reg._WARNED.discard(n)
    sys.modules.pop("synthsae_badplugin", None)


def test_broken_plugin_does_not_break_shipped_variants(bad_plugins):
    validate_sae(SAEConfig(variant="topk"), 16)  # today: ModuleNotFoundError from loading every plug-in
    assert reg.get_variant("topk").__name__ == "TopKSAE"


def test_listing_warns_once_per_broken_plugin_and_skips_it(bad_plugins, capsys):
    names = reg.registered_variants()
    reg.registered_variants()
    err = capsys.readouterr().err.strip().splitlines()
    assert "topk" in names and "raising" in names
    assert "broken_import" not in names and "not_sae" not in names
    assert len(err) == 2 and all(line.startswith("warning: plug-in variant") for line in err)
    assert any("broken_import" in line and "synthsae-badplugin" in line and "ModuleNotFoundError" in line for line in err)
    assert any("not_sae" in line and "not an SAE class" in line for line in err)


@pytest.mark.parametrize("name, words", [("broken_import", ("synthsae-badplugin", "failed to import")),
                                         ("not_sae", ("synthsae-badplugin", "not an SAE class"))])
def test_using_a_broken_plugin_by_name_is_one_line(bad_plugins, name, words):
    with pytest.raises(ConfigError) as e:
        validate_sae(SAEConfig(variant=name), 16)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and all(w in msg for w in words)


def test_plugin_constructor_that_raises_is_one_line(bad_plugins):
    from synthsae.sae import build_sae

    with pytest.raises(ConfigError, match="raising.*failed to build: RuntimeError: plug-in constructor exploded"):
        build_sae(SAEConfig(variant="raising", d_sae=8, k=2), 4, [0])


def test_cli_train_with_a_broken_plugin(bad_plugins, tmp_path):
    from cli import app

    out = tmp_path / "run"
    ok = CliRunner().invoke(app, ["truth", "describe", "--preset", "tiny", "--json"])
    assert ok.exit_code == 0, ok.output
    for name in ("broken_import", "raising"):
        res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--variant", name, "--out", str(out), "--steps", "2",
                                       "--quiet"])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and res.output.strip().startswith("error:") and name in res.output


def test_bench_refuses_duplicate_variants_and_too_many_jobs():
    from synthsae.bench import check_jobs, cpu_cores, resolve_variants

    with pytest.raises(ConfigError, match="'topk' is given twice"):
        resolve_variants(["topk", "topk"])
    with pytest.raises(ConfigError, match="CPU core"):
        check_jobs(cpu_cores() + 62)
    assert check_jobs(1) == 1
