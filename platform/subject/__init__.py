"""Subject-driven (DreamBooth-style) training: a folder of a few images of one subject becomes
the training data of an ordinary `maskunet train` run (data.py); after training, a detector-based
report counts how often the subject appears in new contexts, base vs trained (report.py)."""

# train.method -> its name in report columns and summary rows
METHOD_LABELS = {"masks": "masks", "lora": "LoRA", "full": "full FT"}
