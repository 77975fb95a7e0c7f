"""CADA: class-agnostic alignment of anomaly scores (the regressor) and the fit_cada stage."""
