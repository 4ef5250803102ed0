"""Fine-tuning on GLUE, SuperGLUE and RACE: the run's settings (config), the task registry (tasks) and kinds
(task_kinds), heads, metrics, task checkpoints (checkpoints), predictions (predict) and the run (loop)."""
