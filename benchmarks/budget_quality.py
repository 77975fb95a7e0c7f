"""Quality on a fixed CPU budget: MTD after 10, 30 and 60 CPU-minutes of training on this machine.

    .venv/bin/python benchmarks/budget_quality.py [--budgets 10,30,60] [--seeds 0,1,2] [--settings full_0anom,2shot_0anom]
        [--image-size 256] [--set ingest.resize=tile ...] [--label NAME]
        [--resume [--probe-label NAME] [--probe-library TREE] [--probe-ignore KEY ...]]

Each budget is its own training with a full schedule: a one-epoch run first measures the training
stage's CPU seconds per epoch for the setting (data loading and the memory build included), and the
budget's epochs are the most that fit (at least 1). Every run then goes through the same pipeline
as ``benchmarks/mtd_quality.py`` (ingest -> synthesize -> train -> fit_cada -> evaluate) and its row,
with the training CPU minutes it really took, goes to ``<out>.json``; ``<out>.md`` is rewritten with
mean +- std over the seeds per (label, setting, budget). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mtd_quality import SEEDED, SUMMARY, code_version, mean_sd, run_setting  # noqa: E402

from uniadc_core.io import atomic_path  # noqa: E402


def render(path: Path) -> None:
    rows = json.loads(path.read_text())
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["label"], r["setting"], r["budget_minutes"], r["image_size"], " ".join(o for o in r["overrides"] if o.split("=")[0] not in SEEDED))
        groups.setdefault(key, []).append(r)
    head = "| run | setting | CPU budget (min) | epochs | train CPU min | seeds | " + " | ".join(SUMMARY) + " |"
    lines = [head, "|" + "---|" * (len(SUMMARY) + 6)]
    for (label, setting, budget, _, _), group in sorted(groups.items()):
        cells = []
        for c in SUMMARY:
            cells.append(mean_sd([100 * g["metrics"][f"{c}_cada"] for g in group if g["metrics"].get(f"{c}_cada") is not None]))
        cpu = statistics.mean(g["seconds"]["train_cpu"] for g in group) / 60
        lines.append(f"| {label} | {setting} | {budget:g} | {group[0]['epochs']} | {cpu:.1f} | {len(group)} | " + " | ".join(cells) + " |")
    lines += _per_type_lines(groups)
    notes = path.with_name(path.stem + "_notes.md")  # what the rows mean, written by hand; kept under the table
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# MTD on a fixed CPU budget\n\n`benchmarks/budget_quality.py`: each budget is one training whose epochs "
                       "fit it (CPU seconds per epoch measured by a one-epoch run), CADA variant, mean ± std over seeds, %; "
                       "false-positive and miss rates at the threshold calibrated on held-out normals. 2 cores, nothing else "
                       "running. Overrides of each run are in the JSON beside this file.\n\n" + "\n".join(lines) + "\n"
                       + (f"\n{notes.read_text()}" if notes.is_file() else ""))


def _per_type_lines(groups: dict[tuple, list[dict]]) -> list[str]:
    """Pixel AUROC by defect type (each type's pixels against every normal pixel, CADA-aligned maps), mean ± std
    over the seeds, for the rows that logged it; the pooled pixel AUROC weighs the types by their pixel share."""
    logged = {k: g for k, g in groups.items() if all("per_type" in r for r in g)}
    if not logged:
        return []
    types = sorted({t["defect_type"] for g in logged.values() for r in g for t in r["per_type"]})
    lines = ["", "Pixel AUROC by defect type (its pixels against every normal pixel; the share of the defect pixels "
             "in brackets), mean ± std over the seeds, %:", "",
             "| run | setting | CPU budget (min) | seeds | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 4)]
    for (label, setting, budget, _, _), group in sorted(logged.items()):
        cells = []
        for t in types:
            rows = [x for r in group for x in r["per_type"] if x["defect_type"] == t and x["pixel_auroc"] is not None]
            share = statistics.mean(100 * x["pixel_share"] for x in rows) if rows else 0.0
            cells.append(mean_sd([100 * x["pixel_auroc"] for x in rows], f" ({share:.0f} %)"))
        lines.append(f"| {label} | {setting} | {budget:g} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--budgets", default="10,30,60", help="CPU minutes of training, comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--settings", default="full_0anom,2shot_0anom")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--label", default="scratch")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/budget_quality"))
    p.add_argument("--resume", action="store_true", help="skip the (label, setting, budget, seed) runs, and reuse the epoch "
                   "probes, already logged with these overrides, this image size and this clean library tree")
    p.add_argument("--probe-library", default=None, metavar="TREE",
                   help="with --resume, also reuse an epoch probe logged with this earlier library tree (git rev-parse "
                   "--short <commit>:uniadc_core); only for trees whose training code is the same (check git diff)")
    p.add_argument("--probe-ignore", action="append", default=[], metavar="KEY",
                   help="with --resume, reuse an epoch probe whose overrides differ from these only in KEY (a setting that "
                        "does not change the training stage's cost, such as synthesize.priors); repeatable")
    p.add_argument("--probe-label", default=None, metavar="LABEL",
                   help="with --resume, reuse the epoch probe logged under this label (same overrides and image size): a "
                   "row that repeats another's training with a newer evaluation keeps its epochs")
    a = p.parse_args()
    root, out = Path(a.root), Path(a.out).with_suffix(".json")
    if not (root / "MT_Free").is_dir():
        sys.exit(f"{root}: no MTD dataset here (expected MT_Free/); pass --root")
    if any(s.startswith("train.loader_workers=") and s.split("=", 1)[1] != "0" for s in a.set):
        sys.exit("train.loader_workers > 0: their CPU time is not counted (process time of this process only); keep 0")
    log = json.loads(out.read_text()) if out.is_file() else []
    seeds = [int(x) for x in a.seeds.split(",")]
    code = code_version()
    resumable = a.resume and not code["library"].endswith("+dirty")
    if a.resume and not resumable:
        print(f"--resume ignored: uniadc_core/ has uncommitted changes (library {code['library']}); every run is made again", flush=True)

    def logged(setting: str, libraries: tuple[str, ...] = (code["library"],), label: str = a.label, ignore: tuple[str, ...] = (),
               **match) -> list[dict]:
        def kept(overrides: list[str]) -> list[str]:
            return [o for o in overrides if o.split("=", 1)[0] not in (*SEEDED, *ignore)]

        return [r for r in log if resumable and r["label"] == label and r["setting"] == setting and kept(r["overrides"]) == kept(a.set)
                and r["image_size"] == a.image_size and r.get("library") in libraries
                and all(r.get(k) == v for k, v in match.items())]

    for setting in a.settings.split(","):
        work = ROOT / "benchmarks/work" / f"budget_{setting}"
        probes = logged(setting, (code["library"], *([a.probe_library] if a.probe_library else [])), a.probe_label or a.label,
                        tuple(a.probe_ignore))
        if probes:  # the probe of an earlier session, same overrides and training code: not re-measured
            per_epoch, fixed = probes[0]["cpu_seconds_per_epoch_probe"], probes[0]["cpu_seconds_fixed_probe"]
            print(setting, f"epoch probe reused from {probes[0]['label']}, library {probes[0]['library']}", flush=True)
        else:
            probe = [run_setting(setting, root, work, e, a.image_size, [*a.set, *(f"{k}={seeds[0]}" for k in SEEDED)])[0]["seconds"]["train_cpu"]
                     for e in (1, 2)]
            per_epoch, fixed = max(1.0, probe[1] - probe[0]), max(0.0, 2 * probe[0] - probe[1])  # loading, memory, saving: once
        print(setting, f"training: {fixed:.0f} CPU s once + {per_epoch:.0f} CPU s per epoch", flush=True)
        for budget in [float(b) for b in a.budgets.split(",")]:
            epochs = max(1, math.floor((budget * 60 - fixed) / per_epoch))
            for seed in seeds:
                if logged(setting, budget_minutes=budget, seed=seed):
                    print(setting, budget, seed, f"resumed: logged with library {code['library']}", flush=True)
                    continue
                (r,) = run_setting(setting, root, work, epochs, a.image_size, [*a.set, *(f"{k}={seed}" for k in SEEDED)])
                r.update({"label": a.label, "budget_minutes": budget, "epochs": epochs, "seed": seed, "image_size": a.image_size,
                          "cpu_seconds_per_epoch_probe": per_epoch, "cpu_seconds_fixed_probe": fixed, **code})
                log.append(r)
                with atomic_path(out) as tmp:
                    tmp.write_text(json.dumps(log, indent=2))
                render(out)
                print(setting, budget, seed, epochs, json.dumps({k: round(v, 4) for k, v in r["metrics"].items() if k.endswith("_cada")}),
                      flush=True)


if __name__ == "__main__":
    main()
