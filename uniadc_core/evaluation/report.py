"""metrics.json as a table a person reads: one row per normalisation variant, one column per metric.

The variant and metric names live here (evaluate imports them), so `uniadc report` loads no torch."""

from __future__ import annotations

VARIANTS = ("none", "cada", "oracle")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "type_accuracy", "type_accuracy_given_anomaly", "miou",
           "false_positive_rate", "miss_rate", "recall_at_1pct_fpr", "type_accuracy_uniadc_protocol", "miou_uniadc_protocol",
           "type_calibration_error", "type_named_share", "type_accuracy_named")

SHORT = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "f1_max": "F1-max",
         "type_accuracy": "type acc.", "miou": "mIoU", "false_positive_rate": "FP rate", "miss_rate": "miss rate",
         "recall_at_1pct_fpr": "recall@1%FP", "type_accuracy_given_anomaly": "type|defect",
         "type_accuracy_uniadc_protocol": "type*", "miou_uniadc_protocol": "mIoU*", "type_calibration_error": "type ECE",
         "type_named_share": "named@0.5", "type_accuracy_named": "type|named"}
ROW_NAMES = {"none": "none (one global level)", "cada": "CADA (production)", "oracle": "oracle (true class)"}


def metrics_table(metrics: dict) -> str:
    """A fixed-width table of the flat metrics; a metric that could not be computed shows as '-'."""
    header = ["variant", *(SHORT[m] for m in METRICS)]
    rows = []
    for v in VARIANTS:
        cells = [metrics.get(f"{m}_{v}") for m in METRICS]
        rows.append([ROW_NAMES[v], *("-" if c is None else f"{100 * c:.2f}" for c in cells)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
    out.append(f"(%) on {metrics.get('test_images', '?')} test images ({metrics.get('test_anomalies', '?')} anomalous); "
               f"decision threshold {metrics.get('threshold', float('nan')):.3f} on the aligned score "
               f"(calibrated on held-out normals: {metrics.get('calibrated_threshold', float('nan')):.3f}); type acc.: right type "
               "and above the threshold; type|defect: the type among true defects; * UniADC rule, maps normalised by the test set's own "
               "min and max: for comparison only")
    return "\n".join(out)
