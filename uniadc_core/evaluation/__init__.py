"""Evaluation: metrics, plots and the evaluate stage (which scores through the serving decision)."""
