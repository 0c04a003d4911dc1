"""The bash completion file parses and knows every registry command the CLI has."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from blockyard.cli import controller as controller_cli

ROOT = Path(__file__).resolve().parents[3]
COMPLETION = ROOT / "completion" / "blockyard.bash"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_completion_is_valid_bash() -> None:
    if not shutil.which("bash"):
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(COMPLETION)], check=True)


def test_completion_names_every_registry_command_and_option() -> None:
    text = COMPLETION.read_text()
    top = argparse.ArgumentParser()
    sub = top.add_subparsers()
    controller_cli.register(sub)
    groups = _subcommands(top)
    for group in ("medium", "controller"):
        for name, parser in _subcommands(groups[group]).items():
            assert name in text, f"{group} {name} missing from the completion"
            for action in parser._actions:
                for opt in action.option_strings:
                    if opt.startswith("--") and opt != "--help":
                        assert opt in text, f"{group} {name} {opt} missing"
    for name in ("attach", "detach"):
        for action in groups[name]._actions:
            for opt in action.option_strings:
                assert opt in text or opt in ("-h", "--help"), f"{name} {opt} missing"
