"""Serving: the detector loaded from a models folder, the one decision function, prediction on files, overlays."""
