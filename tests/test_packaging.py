"""Packaging promises: pinned deps agree between pyproject.toml and environment.yml; the CLI starts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["dependencies"]


def test_environment_yml_pins_equal_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = sorted(p for p in pip_section if not p.startswith("-e"))
    assert env_pins == sorted(_pyproject_deps())
    for tool in ("espeak-ng", "flite", "sox"):
        assert tool in env["dependencies"], f"environment.yml lacks {tool}"
    editable = [p.split("#")[0].strip() for p in pip_section if p.startswith("-e")]
    assert editable == ["-e .[hf]"], "environment.yml installs asr-kd with the hf extra (Hugging Face teachers)"


def test_every_dependency_is_pinned_exactly():
    for dep in _pyproject_deps():
        assert "==" in dep, f"{dep} is not pinned with =="


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for dep in _pyproject_deps():
        name, pin = dep.split("==")
        name = name.split("[")[0]
        installed = version(name).split("+")[0]
        assert installed == pin, f"{name}: installed {installed}, pyproject pins {pin}"


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "asr_kd.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("prepare", "train", "label", "targets", "evaluate", "transcribe", "export"):
        assert f"  {command}" in out


def test_cli_rejects_unknown_command():
    proc = subprocess.run([sys.executable, "-m", "asr_kd.cli", "trian"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'trian'" in proc.stderr
