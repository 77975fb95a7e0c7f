"""Every command in the README's bash blocks is checked here: `uniadc` lines parse with the real CLI,
`dvc exp run -S key=value` overrides are valid params (keys and values), scripts and their flags
exist, and make/prefect/dvc subcommands are ones the tools have. The commands themselves run in
other tests (pipeline, promotion, predict, deployment) and in CI (`make test`)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


COMMANDS = _commands()


def test_the_readme_has_the_users_commands():
    first_words = {shlex.split(c)[0] for c in COMMANDS}
    assert {"make", "dvc", "uniadc", "prefect"} <= first_words
    assert any(c.startswith("uniadc predict") for c in COMMANDS) and any(c.startswith("uniadc promote") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_is_valid(command):
    from uniadc_core.config import apply_overrides, parse_params

    words = shlex.split(command)
    tool = words[0]
    if tool == "uniadc":
        from flows.cli import build_parser

        build_parser().parse_args(words[1:])  # the real CLI accepts the line (argparse exits on an error)
    elif tool == "dvc" and words[1:3] == ["exp", "run"]:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        sets = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
        apply_overrides(params, sets)  # every -S key is in params.yaml (dvc exp run -S cannot add keys to it)...
        parse_params(params)  # ... and the values pass validation too
    elif tool == "dvc":
        assert words[1] in {"params", "metrics", "repro", "push", "exp"}
    elif tool == "make":
        targets = re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets
    elif tool.endswith("pytest"):
        declared = (ROOT / "pyproject.toml").read_text()
        expression = words[words.index("-m") + 1] if "-m" in words else ""
        for marker in set(re.findall(r"\w+", expression)) - {"not", "and", "or"}:
            assert f'"{marker}:' in declared, f"README: pytest -m {expression}: marker '{marker}' is not declared"
    elif tool.endswith("python"):
        script = next(w for w in words[1:] if not w.startswith("-"))
        assert (ROOT / script).exists(), script
        if script.endswith(".py") and "--set" in words:  # flags the script accepts
            help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, check=True).stdout
            for flag in (w for w in words if w.startswith("--")):
                assert flag in help_text, flag
    elif tool == "prefect":
        assert (ROOT / "prefect.yaml").is_file()
        assert words[1] in {"work-pool", "--no-prompt", "worker", "deploy"}
    elif tool.endswith("mlflow"):
        assert words[1] == "ui" and "127.0.0.1" in command
    else:
        pytest.fail(f"README command not covered by this test: {command}")
