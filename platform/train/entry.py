"""What `TorchTrainer` is handed as the per-worker function: a name in a module with no imports.

Ray Train's controller unpickles the trainer, and with it this function, by importing its
module; the training loop's own imports (torch, diffusers, DeepSpeed: seconds of CPU) then
happen only in the workers that run it."""


def train_loop_per_worker(config: dict) -> None:
    from maskunet_platform.train.loop import train_loop_per_worker as run

    run(config)
