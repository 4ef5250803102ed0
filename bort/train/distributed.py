"""Horovod when launched by horovodrun (or asked for), else one process with the same API."""
import json
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.errors import BortError


def launched_by_horovodrun():
    return any(key in os.environ for key in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"))


def rank_device(local_rank=0, use_gpu=True, gpu=None):
    """The device of a process: GPU `gpu` if given, else GPU `local_rank` modulo the GPUs this process sees (so a
    scheduler that shows each rank one GPU through CUDA_VISIBLE_DEVICES, or more ranks than GPUs, works); the CPU
    without `use_gpu` or when no GPU is visible. The one device choice of every entry point."""
    num_gpus = mx.context.num_gpus() if use_gpu else 0
    if not num_gpus:
        return mx.cpu()
    return mx.gpu(gpu if gpu is not None else local_rank % num_gpus)


def to_device(array, ctx, dtype=None):
    """A host (numpy) array as an NDArray on `ctx` without blocking the Python thread: copied into CPU memory, then
    to the device by the engine (`as_in_context` only queues the copy). `dtype` None: mx.nd.array's default
    (float32)."""
    host = mx.nd.array(array, ctx=mx.cpu(), dtype=dtype)
    return host if ctx == host.context else host.as_in_context(ctx)


class Distributed:
    """Rank/size and collectives; Horovod underneath when enabled, plain single-process otherwise."""

    def __init__(self, use_horovod=None):
        if use_horovod is None:
            use_horovod = launched_by_horovodrun()
        self.hvd = None
        if use_horovod:
            try:
                import horovod.mxnet as hvd
            except ImportError:
                raise BortError("horovod is not installed; run without horovodrun or install it "
                                "(scripts/setup_env.sh builds it; by hand: CONTRIBUTING.md, 'Installing by hand')") from None
            hvd.init()
            self.hvd = hvd
        self.rank = self.hvd.rank() if self.hvd else 0
        self.size = self.hvd.size() if self.hvd else 1
        self.local_rank = self.hvd.local_rank() if self.hvd else 0

    @property
    def is_root(self):
        return self.rank == 0

    def broadcast_parameters(self, params):
        if self.hvd and self.size > 1:
            self.hvd.broadcast_parameters(params, root_rank=0)
            mx.nd.waitall()

    def allreduce_sum(self, values):
        """Sum a list of floats over ranks (for metrics)."""
        if not self.hvd or self.size == 1:
            return list(values)
        tensor = mx.nd.array(values, dtype="float64")
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=None).asnumpy().tolist()

    def broadcast_object(self, obj, name="object"):
        """Rank 0's JSON-serializable `obj` on every rank (sent as JSON text, nothing is pickled)."""
        if not self.hvd or self.size == 1:
            return obj
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if self.is_root else np.zeros(0, np.uint8)
        length = self.hvd.broadcast(mx.nd.array([len(data)], dtype="int64"), root_rank=0, name=name + ".len")
        length = int(length.asscalar())
        buffer = mx.nd.array(data if self.is_root else np.zeros(length, np.uint8), dtype="uint8")
        if length:
            buffer = self.hvd.broadcast(buffer, root_rank=0, name=name + ".data")
        return json.loads(buffer.asnumpy().tobytes().decode())

    def broadcast_arrays(self, arrays, name="arrays"):
        """Overwrite every NDArray in the list with rank 0's values, in place."""
        if self.hvd and self.size > 1:
            for i, array in enumerate(arrays):
                self.hvd.broadcast_(array, root_rank=0, name=f"{name}.{i}")

    def barrier(self):
        if self.hvd and self.size > 1:
            self.hvd.allreduce(mx.nd.zeros(1), name="barrier").wait_to_read()

    def shutdown(self):
        """End a Horovod job cleanly: wait for pending work, meet every rank, stop Horovod's background thread.

        Without this, a rank that reaches interpreter exit first can tear Horovod down while MXNet's own exit
        hook still runs, and the job dies with SIGABRT after the work is done (seen once in ~10 runs on CPU).
        """
        mx.nd.waitall()
        if self.hvd:
            if self.size > 1:
                self.barrier()
            self.hvd.shutdown()
            self.hvd = None

    def make_trainer(self, params, optimizer, optimizer_params):
        if self.hvd and self.size > 1:
            # Horovod sorts a list of parameters (Parameters are not orderable); a dict keeps our order.
            if not isinstance(params, dict):
                params = {param.name: param for param in params}
            return self.hvd.DistributedTrainer(params, optimizer, optimizer_params)
        return mx.gluon.Trainer(params, optimizer, optimizer_params, update_on_kvstore=False, kvstore=None)
