"""Offline benchmarks for MaskUNet models."""
