"""The `sauce-jax` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sauce_jax import cli


def test_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "sauce_jax.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "info" in result.stdout and "selfcheck" in result.stdout


@pytest.mark.parametrize("command", ["info", "selfcheck"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sauce-jax " + command in capsys.readouterr().out


def test_info_describes_a_checkpoint(small_clip_dir, capsys):
    assert cli.main(["info", str(small_clip_dir[0])]) == 0
    out = capsys.readouterr().out
    assert "jax" in out and "devices" in out
    assert "clip_vision_model" in out and "2 blocks, width 32" in out
    assert "safetensors:" in out


def test_info_on_a_bad_directory_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_selfcheck_passes(capsys):
    assert cli.main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok") == 2 and "FAIL" not in out


def test_selfcheck_fails_at_an_impossible_tolerance(capsys):
    assert cli.main(["selfcheck", "--tolerance", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out
