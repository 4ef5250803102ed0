"""What every training loop shares: optimizers and schedules, float16, Horovod-or-one-process."""
