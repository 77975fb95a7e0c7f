"""Anomaly synthesis: shape priors and synthesizers (procedural, diffusion) into Parquet shards."""
