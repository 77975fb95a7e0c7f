import dataclasses
from pathlib import Path

import pytest
import yaml

from uniadc_core.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_repository_params_file_parses_and_matches_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.kind == "demo"
    assert params.train.epochs == Params().train.epochs
    assert params.evaluate.mlflow.registered_model == "uniadc-discriminator"


def test_empty_mapping_gives_defaults():
    assert parse_params({}) == Params()


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"epoch": 3}})
    msg = str(err.value)
    assert "'train.epoch'" in msg and "Did you mean 'epochs'" in msg and "batch_size" in msg


def test_unknown_section_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="'trian' is not known.*Did you mean 'train'"):
        parse_params({"trian": {}})


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"'synthesize.backend'.*'procedural'"):
        parse_params({"synthesize": {"backend": "gan"}})


def test_wrong_type_and_out_of_range_values():
    with pytest.raises(ConfigError, match=r"'train.batch_size': got 'big', expected an integer"):
        parse_params({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"'synthesize.repaint_fraction': got 1.5, expected a number in \[0, 1\]"):
        parse_params({"synthesize": {"repaint_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"'train.epochs': got True"):
        parse_params({"train": {"epochs": True}})


def test_union_and_nested_values():
    p = parse_params({"ingest": {"normal_shots": 2, "demo": {"classes": ["tile"]}}})
    assert p.ingest.normal_shots == 2 and p.ingest.demo.classes == ["tile"]
    assert parse_params({"ingest": {"normal_shots": "all"}}).ingest.normal_shots == "all"
    with pytest.raises(ConfigError, match="ingest.normal_shots"):
        parse_params({"ingest": {"normal_shots": "some"}})
    with pytest.raises(ConfigError, match=r"ingest.demo.classes\[1\]"):
        parse_params({"ingest": {"demo": {"classes": ["tile", 3]}}})


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"fit_cada": {"stepz": 1}}))
    with pytest.raises(ConfigError, match=f"{bad}: params key 'fit_cada.stepz'"):
        load_params(bad)
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_dvc_stages_list_exactly_their_own_section():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    sections = {f.name for f in dataclasses.fields(Params)}
    for name, stage in dvc["stages"].items():
        assert stage["params"] == [name], name
        assert name in sections
        assert stage["cmd"] == f"python -m flows.{name}"


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from uniadc_core.io import atomic_dir, atomic_path

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_directory_replaced_atomically_keeps_the_old_one_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from uniadc_core.io import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder moving in (a full disk, a quota, an NFS hiccup)
            raise OSError("no space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="no space"), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    monkeypatch.undo()
    assert (target / "weights").read_text() == "old"  # the old folder is back, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or aside folder left
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("section", [{"train": {"tile_context": 0.5}}, {"train": {"memory": {"route": "nearest_class"}}},
                                     {"train": {"reconstruction": {"enabled": True}}}])
def test_a_removed_option_says_so_and_how_to_fix_the_params(section):
    from uniadc_core.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match=r"was removed: it was measured as not paying \(docs/results.md\); delete it from params.yaml"):
        parse_params(section)
