from __future__ import annotations

from prefect import get_run_logger, task

from tasks import retry_on_io
from uniadc_core.config import EvaluateConfig, PromoteConfig
from uniadc_core.data.manifest import read_manifest
from uniadc_core.evaluation.evaluate import evaluate
from uniadc_core.tracking.promotion import Decision, decide


@task(name="score-version", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_on_io)
def score_version(uri: str, name: str, version: str, manifest_path: str, cfg: EvaluateConfig, root: str = ".") -> dict:
    """Evaluate a registered version on today's evaluation data (the manifest's test images)."""
    from uniadc_core.tracking import load_detector

    detector = load_detector(uri, name, version)
    metrics = evaluate(detector, read_manifest(manifest_path, root), cfg, None)  # metrics only, no report files
    get_run_logger().info("%s version %s on %s: image AUROC %s, type accuracy %s", name, version, manifest_path,
                          metrics.get("image_auroc_cada"), metrics.get("type_accuracy_cada"))
    return metrics


@task(name="decide-promotion")
def decide_promotion(challenger: dict, champion: dict | None, cfg: PromoteConfig) -> Decision:
    decision = decide(challenger, champion, cfg)
    get_run_logger().info("promotion: %s (%s)", "promote" if decision.promote else "keep the champion", decision.reason)
    return decision


@task(name="record-decision", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_on_io)
def record(uri: str, name: str, challenger: str, champion: str | None, decision: Decision) -> None:
    from uniadc_core.tracking import record_decision

    record_decision(uri, name, challenger, champion, decision.promote, decision.tags())


@task(name="rollback-champion", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_on_io)
def rollback(uri: str, name: str) -> str:
    from uniadc_core.tracking import rollback_champion

    return rollback_champion(uri, name)
