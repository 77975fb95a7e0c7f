"""uniadc core library: anomaly synthesis, the multi-task discriminator, CADA and metrics.

A plain library: no Prefect, no DVC; MLflow is touched only in ``uniadc_core.tracking.registry``.
Packages follow the pipeline's stages and import downwards only::

    config, io, device, metrics      shared leaves
    data          ingest; preprocessing, vocabulary, shard reader (the contracts later stages read)
    weights       pretrained weights read offline (open_clip), for synthesis and the model
    synthesis     shape priors, synthesizers, the shard writer
    model         backbones, discriminator, training
    cada          the CADA regressor and its fitting
    serving       the detector and its one decision function, prediction, overlays
    evaluation    metrics, plots, the evaluate stage (through serving's decision)
    tracking      MLflow runs and registry, promotion rules
"""

__version__ = "0.1.0"
