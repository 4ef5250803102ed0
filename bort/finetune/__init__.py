"""Fine-tuning on GLUE, SuperGLUE and RACE: the task registry, heads, metrics, the loop."""
