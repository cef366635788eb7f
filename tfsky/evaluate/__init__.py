"""Measure trained models: segmentation metrics, naive baselines and JSON + Markdown reports."""
