"""The shapes benchmark: an offline stand-in for T2I-CompBench colour/shape/spatial + FID.

Held-out prompts of the synthetic shapes world (`prompts`), a detector that reads shapes
back from an image (`detector`), per-category scores with confidence intervals
(`scoring`), a KID over hand-crafted features (`features`) and batched, seed-stable
generation (`generate`).
"""
