"""Task heads on top of the Bort encoder, and the model that joins them.

`ClassifierHead` is the original Bort classifier: the first token's hidden state -> dropout -> dense (tanh) ->
dropout -> dense. For BERT-family models it is BERT's pooler + classifier: no dropout before the dense (tanh)
layer, which starts from the checkpoint's pooler when it has one (bort.finetune.checkpoints). With `num_spans` > 0 the mean of each span's token states is concatenated to the first token
(WiC: the target word in each sentence; WSC: the noun phrase and the pronoun). The same head gives class logits
(num_outputs = classes), a regression value (STS-B, 1 output) or one score per option (multiple choice, 1 output
per option sequence).
"""
import bort  # noqa: F401
import mxnet as mx
from mxnet.gluon import Block, nn

from bort.model import BortModel


class ClassifierHead(Block):
    def __init__(self, units, num_outputs, num_spans=0, dropout=0.1, input_dropout=True, prefix=None):
        super().__init__(prefix=prefix)
        self.num_spans = num_spans
        with self.name_scope():
            self.dropout1 = nn.Dropout(dropout if input_dropout else 0.0)
            self.dense = nn.Dense(units, activation="tanh", in_units=units * (1 + num_spans), flatten=False)
            self.dropout2 = nn.Dropout(dropout)
            self.out = nn.Dense(num_outputs, in_units=units, flatten=False)

    def forward(self, hidden, spans=None):
        """hidden (N, L, units); spans (N, S, 2) token [start, end) positions -> (N, num_outputs)."""
        features = hidden[:, 0, :]
        if self.num_spans:
            features = mx.nd.concat(features, span_means(hidden, spans), dim=1)
        return self.out(self.dropout2(self.dense(self.dropout1(features))))


def span_means(hidden, spans):
    """Mean hidden state over each span: hidden (N, L, U), spans (N, S, 2) -> (N, S * U)."""
    length = hidden.shape[1]
    positions = mx.nd.arange(length, ctx=hidden.context).reshape((1, 1, length))
    start = spans[:, :, 0:1].astype("float32")
    end = spans[:, :, 1:2].astype("float32")
    mask = mx.nd.broadcast_greater_equal(positions, start) * mx.nd.broadcast_lesser(positions, end)
    mask = mask.astype(hidden.dtype)
    counts = mx.nd.maximum(mask.sum(axis=2, keepdims=True), 1)
    pooled = mx.nd.batch_dot(mask / counts, hidden)  # (N, S, U)
    return pooled.reshape((0, -1))


def segment_ids(inputs, valid_length):
    """BERT's token types of `[CLS] A [SEP] B [SEP]` rows: 0 up to and including the first separator, 1 after it.
    The separator is each row's last valid token, so no token id is needed. inputs (N, L) ids, valid_length (N,)
    -> (N, L) float32 of 0/1 (padding gets 1 or 0; it is masked out anyway)."""
    last = mx.nd.pick(inputs, valid_length - 1, axis=1)
    first_separator = mx.nd.argmax(mx.nd.broadcast_equal(inputs, last.reshape((-1, 1))), axis=1)
    positions = mx.nd.arange(inputs.shape[1], ctx=inputs.context).reshape((1, -1))
    return mx.nd.broadcast_greater(positions, first_separator.reshape((-1, 1)))


class TaskModel(Block):
    """Bort encoder (no MLM head) + ClassifierHead. Parameters are named `bort.*` and `head.*`. Models with token
    types (BERT family) get segment ids from the inputs (`segment_ids`)."""

    def __init__(self, config, num_outputs, num_spans=0, dropout=0.1, prefix="task_"):
        super().__init__(prefix=prefix)
        self.config = config
        with self.name_scope():
            self.bort = BortModel(config, use_decoder=False, prefix="bort_")
            self.head = ClassifierHead(config.units, num_outputs, num_spans, dropout,
                                       input_dropout=config.family != "bert", prefix="head_")

    def forward(self, inputs, valid_length, spans=None):
        if self.config.token_type_vocab_size:
            hidden = self.bort(inputs, valid_length, None, segment_ids(inputs, valid_length))
        else:
            hidden = self.bort(inputs, valid_length)
        return self.head(hidden, spans)
