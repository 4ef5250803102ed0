"""Knowledge-distillation pretraining: the loop, the step, batches, resume state, losses, teacher cache."""
