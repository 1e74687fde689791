"""`maskunet compare`: masks vs. LoRA vs. full fine-tuning on the same data, budget and base."""
