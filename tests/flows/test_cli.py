import json
from pathlib import Path

from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_check_params_prints_the_parsed_config(capsys):
    assert main(["check-params", "--params", str(ROOT / "params.yaml")]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["train"]["backbone"] == "scratch" and parsed["evaluate"]["mlflow"]["experiment"] == "uniadc"


def test_check_params_reports_a_bad_key(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    assert main(["check-params", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'train.learning_rate' is not known" in err and "lr" in err
