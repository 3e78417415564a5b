"""The README's examples against the CLI and the package, so that they cannot drift apart: every
`audiovit ...` command in its shell blocks parses with today's flags and choices, the extras its
pip route names exist, and the Python examples' names are the package's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib

import audiovit
from audiovit.cli import build_parser

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(program: str) -> list[str]:
    """Each ``program ...`` command of the shell blocks, cut at ; && | < > and a loop's ``do``,
    with line continuations joined."""
    out = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^.*?\bdo\b\s*", "", line) if line.lstrip().startswith("for ") else line
            for part in re.split(r";|&&|\||[<>]", line):
                words = shlex.split(part, comments=True)
                if words and words[0] == program:
                    out.append(shlex.join(words))
    return out


def test_the_readme_has_examples():
    assert len(commands("audiovit")) >= 15 and commands("pip") and blocks("python")


@pytest.mark.parametrize("command", commands("audiovit"))
def test_every_readme_command_parses(command, capsys):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit:
        pytest.fail(f"README: `{command}` does not parse: {capsys.readouterr().err.strip()}")


def test_the_pip_route_names_real_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = {x for cmd in commands("pip") for x in re.findall(r"\.\[([\w,]+)\]", cmd)}
    assert named and all(e in extras for x in named for e in x.split(",")), named


def test_python_examples_use_the_packages_names():
    used = {m for block in blocks("python") for m in re.findall(r"\baudiovit\.(\w+)", block)}
    imported = {
        n.strip()
        for block in blocks("python")
        for names in re.findall(r"from audiovit import ([\w, ]+)", block)
        for n in names.split(",")
    }
    missing = sorted(n for n in used | imported if not hasattr(audiovit, n))
    assert used and not missing, missing
