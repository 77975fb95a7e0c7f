"""The promotion gate: better, worse, tie, missing champion, missing metrics, absolute gates; MLflow tags and rollback."""

import pytest

from uniadc_core.config import PromoteConfig
from uniadc_core.tracking.promotion import decide

CFG = PromoteConfig(min_image_auroc=0.8, min_type_accuracy=0.5, max_drop=0.02,
                    tracked=["image_auroc_cada", "pixel_auroc_cada", "type_accuracy_cada"])
CHAMP = {"image_auroc_cada": 0.90, "pixel_auroc_cada": 0.95, "type_accuracy_cada": 0.70}


def test_better_is_promoted_with_the_figures():
    d = decide({"image_auroc_cada": 0.93, "pixel_auroc_cada": 0.95, "type_accuracy_cada": 0.72}, CHAMP, CFG)
    assert d.promote and "better than the champion" in d.reason
    tags = d.tags()
    assert tags["promotion.decision"] == "promoted" and tags["promotion.challenger.image_auroc_cada"] == "0.9300"
    assert tags["promotion.champion.image_auroc_cada"] == "0.9000"


def test_worse_is_never_promoted():
    d = decide({"image_auroc_cada": 0.85, "pixel_auroc_cada": 0.96, "type_accuracy_cada": 0.75}, CHAMP, CFG)
    assert not d.promote and "image_auroc_cada drops by 0.0500" in d.reason
    small = decide({"image_auroc_cada": 0.89, "pixel_auroc_cada": 0.94, "type_accuracy_cada": 0.69}, CHAMP, CFG)
    assert not small.promote and "not better than" in small.reason  # small drops everywhere: worse on the mean


def test_a_tie_keeps_the_champion():
    d = decide(dict(CHAMP), CHAMP, CFG)
    assert not d.promote and "a tie with the champion" in d.reason


def test_without_a_champion_the_gates_decide():
    assert decide(dict(CHAMP), None, CFG).promote
    low = decide({**CHAMP, "type_accuracy_cada": 0.4}, None, CFG)
    assert not low.promote and "type_accuracy_cada 0.4000 is below the gate 0.5000" in low.reason


def test_missing_metrics_reject():
    d = decide({"image_auroc_cada": 0.99, "pixel_auroc_cada": None, "type_accuracy_cada": 0.9}, CHAMP, CFG)
    assert not d.promote and "lacks metrics ['pixel_auroc_cada']" in d.reason
    assert not decide({"image_auroc_cada": float("nan"), "pixel_auroc_cada": 0.9, "type_accuracy_cada": 0.9}, None, CFG).promote
    # a champion scored without one metric is compared on the others
    partial = {k: v for k, v in CHAMP.items() if k != "pixel_auroc_cada"}
    assert decide({"image_auroc_cada": 0.95, "pixel_auroc_cada": 0.5, "type_accuracy_cada": 0.75}, partial, CFG).promote


def test_mlflow_tags_alias_history_and_rollback(tmp_path):
    from mlflow import MlflowClient

    from uniadc_core.tracking import alias_version, record_decision, rollback_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    versions = [str(client.create_model_version("m", source=str(tmp_path / f"v{i}")).version) for i in range(3)]
    assert alias_version(uri, "m", "champion") is None and alias_version(uri, "nope", "champion") is None
    record_decision(uri, "m", versions[0], None, True, decide(dict(CHAMP), None, CFG).tags())
    better = decide({"image_auroc_cada": 0.95, "pixel_auroc_cada": 0.96, "type_accuracy_cada": 0.75}, CHAMP, CFG)
    record_decision(uri, "m", versions[1], versions[0], better.promote, better.tags())
    worse = decide({"image_auroc_cada": 0.80, "pixel_auroc_cada": 0.96, "type_accuracy_cada": 0.75}, CHAMP, CFG)
    record_decision(uri, "m", versions[2], versions[1], worse.promote, worse.tags())
    assert alias_version(uri, "m", "champion") == versions[1]  # the worse one was not promoted
    rejected = client.get_model_version("m", versions[2]).tags
    assert rejected["promotion.decision"] == "rejected" and rejected["promotion.champion_version"] == versions[1]
    assert rollback_champion(uri, "m") == versions[0] and alias_version(uri, "m", "champion") == versions[0]
    assert "rolled back" in client.get_model_version("m", versions[1]).tags["promotion.decision"]
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback_champion(uri, "m")


def test_two_promotions_at_once_move_the_alias_once(tmp_path):
    """Both read champion v0 and score v1; the first records (v1 becomes champion, history 0,1); the second finds the
    alias where its own decision would put it and changes nothing more; a third, stale (it read no champion), refuses."""
    from mlflow import MlflowClient

    from uniadc_core.tracking import alias_version, record_decision
    from uniadc_core.tracking.registry import HISTORY_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    v = [str(client.create_model_version("m", source=str(tmp_path / f"v{i}")).version) for i in range(3)]
    record_decision(uri, "m", v[0], None, True, decide(dict(CHAMP), None, CFG).tags())
    better = decide({"image_auroc_cada": 0.95, "pixel_auroc_cada": 0.96, "type_accuracy_cada": 0.75}, CHAMP, CFG)
    record_decision(uri, "m", v[1], v[0], better.promote, better.tags())
    record_decision(uri, "m", v[1], v[0], better.promote, better.tags())  # the second promotion of the same pair
    assert alias_version(uri, "m", "champion") == v[1]
    assert client.get_registered_model("m").tags[HISTORY_TAG] == f"{v[0]},{v[1]}"
    with pytest.raises(RuntimeError, match=rf"@champion moved from version none to {v[1]} while this promotion ran"):
        record_decision(uri, "m", v[2], None, True, better.tags())
    assert alias_version(uri, "m", "champion") == v[1]


def test_a_promotion_or_rollback_killed_between_its_two_writes_is_repaired(tmp_path, monkeypatch):
    """Each writes the champion history, then moves the alias; a crash between them must not make a later rollback
    bring back the wrong version (the alias is the truth, the history is repaired to end at it)."""
    from mlflow import MlflowClient

    from uniadc_core.tracking import alias_version, record_decision, rollback_champion
    from uniadc_core.tracking.registry import HISTORY_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    v = [str(client.create_model_version("m", source=str(tmp_path / f"v{i}")).version) for i in range(3)]
    tags = decide(dict(CHAMP), None, CFG).tags()
    record_decision(uri, "m", v[0], None, True, tags)
    record_decision(uri, "m", v[1], v[0], True, tags)
    real = MlflowClient.set_registered_model_alias

    def killed(self, *args):
        raise SystemExit("killed")  # the process dies: nothing after this line runs

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", killed)
    with pytest.raises(SystemExit):
        record_decision(uri, "m", v[2], v[1], True, tags)  # the history says v2, the alias still v1
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert alias_version(uri, "m", "champion") == v[1]
    assert rollback_champion(uri, "m") == v[0]  # from the live v1, not from v2 that never went live
    assert client.get_registered_model("m").tags[HISTORY_TAG] == v[0]

    record_decision(uri, "m", v[1], v[0], True, tags)
    record_decision(uri, "m", v[2], v[1], True, tags)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", killed)
    with pytest.raises(SystemExit):
        rollback_champion(uri, "m")  # the history trimmed to v0,v1, the alias still v2
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert alias_version(uri, "m", "champion") == v[2]
    assert rollback_champion(uri, "m") == v[1]  # the rollback asked for, once: v2 -> v1
    assert client.get_registered_model("m").tags[HISTORY_TAG] == f"{v[0]},{v[1]}"
    assert rollback_champion(uri, "m") == v[0]


def test_one_holder_of_a_lock_at_a_time_and_none_after_a_kill(tmp_path):
    import subprocess
    import sys
    import time

    from uniadc_core.io import exclusive

    lock = tmp_path / ".uniadc/promote.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom uniadc_core.io import exclusive\n"
                               f"with exclusive({str(lock)!r}, 'x'):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"a promotion is already running \(pid {holder.pid}, since .*\).*lock file {lock}"):
            with exclusive(lock, "a promotion", wait_s=0.5):
                pass
    finally:
        holder.kill()  # killed while holding it: the system drops the lock
        holder.wait()
    start = time.monotonic()
    with exclusive(lock, "a promotion", wait_s=5):
        assert time.monotonic() - start < 2


def test_retraining_beside_a_running_dvc_repro_says_so(tmp_path):
    import sys

    from flows.retrain import CommandError, DvcBusy, _run
    from tasks import retry_on_io

    busy = [sys.executable, "-c", "import sys; print('ERROR: Unable to acquire lock. Most likely another DVC process is running'); sys.exit(1)"]
    with pytest.raises(DvcBusy, match=r"another DVC command \(a `dvc repro`\?\) is running in .* holds its lock .*nothing was changed"):
        _run(busy, str(tmp_path))
    failed = [sys.executable, "-c", "import sys; print('ValueError: ingest.root: no such folder'); sys.exit(1)"]
    with pytest.raises(CommandError, match="exit 1") as caught:
        _run(failed, str(tmp_path))

    class Failed:  # a Prefect state whose result raises the task's error
        def __init__(self, exc):
            self.exc = exc

        def result(self):
            raise self.exc

    assert retry_on_io(None, None, Failed(DvcBusy("busy")))  # the lock: waited for once
    assert not retry_on_io(None, None, Failed(caught.value))  # a failed training is not run twice
