"""Pretraining the tiny shapes base from scratch: VAE first, then U-Net + text encoder."""
