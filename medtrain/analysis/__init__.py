"""Quantitative analysis of segmentations: object measurements, agreement with ground truth, overlays."""
