"""The settings of one fine-tuning run.

finetune_bort.py turns its flags (the original Bort repo's names and defaults) into a `FinetuneConfig`;
`bort.finetune.loop.run(config, tokenizer)` reads nothing else. Field names are the flags' names.
"""
import dataclasses


@dataclasses.dataclass
class FinetuneConfig:
    """Every setting a fine-tuning run reads, with the original finetune_bort.py's defaults."""

    task_name: str = None  # a name of bort.finetune.tasks.task_names() (required)
    data_dir: str = None  # the task's data directory (None: $MXNET_HOME/datasets/<task dir>)
    diagnostic_data_dir: str = None  # GLUE diagnostic (AX) directory, predicted with the MNLI model
    epochs: int = 3  # number of epochs
    ramp_up_epochs: int = 3  # epochs over which the warmup/decay schedule runs
    training_steps: int = None  # total steps (overrides epochs)
    batch_size: int = 32  # examples per device and step
    dev_batch_size: int = 8  # batch size for dev and test
    bucket_batches: int = None  # batches sorted by length together (1: random; None: 100, 1 for regression)
    init: str = "uniform"  # initialization of the task head: gaussian, uniform, orthogonal, xavier
    prob: float = 0.5  # scale of the head's initialization
    lr: float = 3e-5  # peak learning rate
    epsilon: float = 1e-6  # Adam epsilon
    warmup_ratio: float = 0.1  # fraction of the steps spent warming up
    weight_decay: float = 0.01  # BERTAdam weight decay
    dropout: float = 0.1  # dropout of the task head
    max_len: int = None  # maximum sequence length with special tokens (None: 512, or the model's positions)
    seed: int = 2  # seed of initialization, shuffling and dropout
    gpu: int = None  # GPU to use; 999 or None: CPU
    accumulate: int = None  # batches per update (gradient accumulation; None: 1)
    log_interval: int = 10  # steps between training log records
    no_distributed: bool = False  # do not use Horovod even when launched by horovodrun
    model_config: str = "bort_4_8_768_1024"  # architecture when no config JSON is beside the parameters
    pretrained_parameters: str = "model/bort.params"  # pretrained Bort ('none': random initialization)
    model_parameters: str = None  # a fine-tuned checkpoint of this task
    output_dir: str = "./output_dir"  # checkpoints, metrics.jsonl, leaderboard files, result.json
    only_inference: bool = False  # skip training: evaluate dev, predict test
    dtype: str = "float32"  # float32 or float16
    early_stop: int = None  # epochs without dev improvement before stopping (None: never)
    cb_expansion: bool = False  # CB: shorten long texts as the original did (Task.read's cb_expansion)
    race_submission_format: str = "json"  # RACE test predictions: 'json' or 'original' (Task.write_submission)
