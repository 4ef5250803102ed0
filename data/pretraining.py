"""Pretraining data: raw text -> masked-LM shards, in parallel, deterministic and pickle-free.

Input is one sentence per line with blank lines between documents. The main process streams the input files
and cuts them into chunks of about `CHUNK_BYTES` bytes at document boundaries (a document longer than 16 times
that is split at a line end). Worker processes each take one chunk at a time: decode, tokenize, wrap
every sentence in `<s> … </s>`, build and mask instances with a random generator seeded by
(`random_seed`, chunk number); a "random next" segment B comes from another document of the same chunk
(the original drew it from the whole input, which it held in memory). Results come back in chunk order,
instance i goes to output `i % num_outputs`, and rows are spooled to disk as they arrive (`ShardWriter`),
so memory stays bounded by a few chunks and the shards are byte-identical whatever the number of workers.

The shard format is `data.pretraining_format`, the worker processes `data.workers`.
"""
import collections
import contextlib
import dataclasses
import glob
import logging
import os
import re
import time

import numpy as np

from bort.errors import BortError
from bort.io import write_json
from bort.locking import owned_directory, release_directory
from data.pretraining_format import FORMAT_VERSION, ShardWriter
from data.pretraining_instances import InstanceOptions, MaskingVocab, chunk_instances
from data.shard_files import SUMMARY_NAME, expand_paths
from data.workers import run_in_workers, sigterm_stops_workers

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 17
STAT_KEYS = ("lines", "skipped_lines", "documents", "sentences", "tokens", "instances", "instance_tokens",
             "masked_positions")

# A chunk: its number (which seeds its random generator), the file, the number of its first line, and its
# bytes (whole lines).
Chunk = collections.namedtuple("Chunk", ["index", "path", "first_line", "data"])
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_READ_BLOCK = 1 << 20
_TEMPORARY_SHARDS = ".part-*.npz.*.tmp"  # what bort.io.atomic_path names a shard while it is written
SIGTERM_MESSAGE = "error: terminated by SIGTERM; workers stopped, no shard written\n"


def shard_name(index):
    return f"part-{index:03d}.npz"


# ---------------------------------------------------------------------------------------------------------------
# Input


def _open_input(path):
    try:
        return open(path, "rb")
    except OSError as err:
        raise BortError(f"{path}: cannot read ({err.strerror})") from None


def count_lines(paths):
    """Number of lines in the files (for the progress bar)."""
    total = 0
    for path in paths:
        with _open_input(path) as handle:
            last = b"\n"
            for block in iter(lambda: handle.read(1 << 20), b""):
                total += block.count(b"\n")
                last = block[-1:]
            total += last != b"\n"
    return total


def _find_cut(buffer, chunk_bytes, max_chunk_bytes, final):
    """Where the chunk starting at buffer[0] ends, or None when more data is needed.

    The first blank line ending at or after `chunk_bytes`; failing that (a document longer than
    `max_chunk_bytes`) the last line end before `max_chunk_bytes`. Depends only on the data, never on how
    it was read.
    """
    if len(buffer) >= chunk_bytes:
        match = _BLANK_LINE.search(buffer, chunk_bytes - 1)
        if match and match.end() <= max_chunk_bytes:
            return match.end()
        if match or len(buffer) >= max_chunk_bytes:
            cut = buffer.rfind(b"\n", 0, max_chunk_bytes)
            if cut >= 0:
                return cut + 1
            cut = buffer.find(b"\n", max_chunk_bytes)  # one enormous line
            if cut >= 0:
                return cut + 1
    return len(buffer) if final and buffer else None


def iter_chunks(paths, chunk_bytes=CHUNK_BYTES, max_chunk_bytes=None):
    """Chunks of whole lines, cut after the first blank line past `chunk_bytes` (and at each file's end)."""
    max_chunk_bytes = max_chunk_bytes or 16 * chunk_bytes
    index = 0
    for path in paths:
        with _open_input(path) as handle:
            buffer, first_line = bytearray(), 1
            while True:
                try:
                    block = handle.read(_READ_BLOCK)
                except OSError as err:
                    raise BortError(f"{path}: cannot read ({err.strerror})") from None
                buffer += block
                while True:
                    cut = _find_cut(buffer, chunk_bytes, max_chunk_bytes, final=not block)
                    if cut is None:
                        break
                    data = bytes(buffer[:cut])
                    del buffer[:cut]
                    yield Chunk(index, path, first_line, data)
                    index += 1
                    first_line += data.count(b"\n")
                if not block:
                    break


# ---------------------------------------------------------------------------------------------------------------
# Work on one chunk (in a worker process, or in the main process with one worker)


def tokenize_chunk(chunk, tokenizer, bos_id, eos_id, skip_invalid_utf8=False):
    """Flat `<s> … </s>` token list, sentence starts, document sentence ranges, skipped line count."""
    flat, starts, documents = [], [0], []
    doc_first, skipped = 0, 0
    encode = tokenizer.encode
    lines = chunk.data.split(b"\n")
    if chunk.data.endswith(b"\n"):
        lines.pop()
    for offset, raw in enumerate(lines):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if skip_invalid_utf8:
                skipped += 1
                continue
            raise BortError(f"{chunk.path}:{chunk.first_line + offset}: invalid UTF-8 (byte {err.start + 1} of the "
                            "line); expected UTF-8 text, or pass --skip_invalid_utf8 to skip and count such lines") \
                from None
        if offset == 0 and chunk.first_line == 1:
            text = text.lstrip("\ufeff")
        text = text.strip()
        if not text:
            if len(starts) - 1 > doc_first:
                documents.append((doc_first, len(starts) - 1))
                doc_first = len(starts) - 1
            continue
        ids = encode(text)
        if not ids:
            continue
        flat.append(bos_id)
        flat.extend(ids)
        flat.append(eos_id)
        starts.append(len(flat))
    if len(starts) - 1 > doc_first:
        documents.append((doc_first, len(starts) - 1))
    return flat, starts, documents, skipped, len(lines)


def chunk_rng(random_seed, chunk_index):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([random_seed, chunk_index])))


def process_chunk(chunk, tokenizer, options, vocab, skip_invalid_utf8=False):
    """One chunk -> (InstanceBatch, stats). Depends only on the chunk, the options and the chunk's number."""
    flat, starts, documents, skipped, num_lines = tokenize_chunk(chunk, tokenizer, vocab.bos_id, vocab.eos_id,
                                                      skip_invalid_utf8)
    flat = np.array(flat, dtype=np.int32)
    batch = chunk_instances(flat, starts, documents, chunk_rng(options.random_seed, chunk.index), options, vocab)
    stats = {"lines": num_lines, "skipped_lines": skipped, "documents": len(documents),
             "sentences": len(starts) - 1, "tokens": len(flat), "instances": len(batch),
             "instance_tokens": int(batch.input_offsets[-1]), "masked_positions": int(batch.masked_offsets[-1])}
    return batch, stats


# ---------------------------------------------------------------------------------------------------------------
# The whole job


def _stale_shards(output_dir, shard_paths):
    """Shards of an earlier run (with more --num_outputs) that this run does not replace."""
    written = {os.path.abspath(p) for p in shard_paths}
    return sorted(p for p in glob.glob(os.path.join(glob.escape(output_dir), "part-*.npz"))
                  if os.path.abspath(p) not in written)


def _prepare_output_dir(output_dir):
    """Check the (locked) output directory and remove temporary files a killed earlier run left behind."""
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise BortError(f"{output_dir}: output directory is not writable")
    for leftover in glob.glob(os.path.join(glob.escape(output_dir), _TEMPORARY_SHARDS)):
        with contextlib.suppress(OSError):
            os.remove(leftover)


def _remove_partial_output(output_dir, finished_shards):
    """On SIGTERM: remove this run's temporary and `finished_shards` files, and the directory if this run made it."""
    for path in list(finished_shards) + glob.glob(os.path.join(glob.escape(output_dir), _TEMPORARY_SHARDS)):
        with contextlib.suppress(OSError):
            os.remove(path)
    release_directory(output_dir, remove_if_unused=True)


def _describe_instance(tokenizer, batch):
    inst = batch.instance(0)

    def tokens(ids):
        return " ".join(tokenizer.id_to_token(int(i)) for i in ids)

    return (f"first instance: tokens: {tokens(inst.input_ids)} | segment_ids: {inst.segment_ids.tolist()} | "
            f"masked_lm_positions: {inst.masked_positions.tolist()} | masked_lm_labels: {tokens(inst.masked_ids)} "
            f"| next_sentence_label: {int(inst.next_sentence_label)}")


def create_pretraining_data(input_files, output_dir, tokenizer, options=None, num_workers=1, num_outputs=1,
                            skip_invalid_utf8=False, progress=True, chunk_bytes=CHUNK_BYTES, extra_summary=None,
                            format_version=FORMAT_VERSION):
    """Write `part-000.npz` … and `summary.json` into `output_dir`; return the summary dict.

    `format_version` is the shard format (`data.pretraining_format`): 2, or 1 for readers of the int32 layout.

    `input_files` is a comma-separated string of paths/globs/directories or a list of files. Every problem a
    user can cause raises a one-line BortError before any shard appears.
    """
    start = time.time()
    options = (options or InstanceOptions()).validate()
    for flag, value in (("num_workers", num_workers), ("num_outputs", num_outputs)):
        if not isinstance(value, int) or value < 1:
            raise BortError(f"--{flag} {value}: expected an integer >= 1")
    if format_version not in (1, FORMAT_VERSION):
        raise BortError(f"--format_version {format_version}: expected 1 or {FORMAT_VERSION}")
    if isinstance(input_files, str):
        input_files = expand_paths(input_files, what="input files")
    input_files = [os.fspath(p) for p in input_files]
    if not input_files:
        raise BortError("no input files given")
    total_lines = count_lines(input_files)  # also checks that every file can be read, before any work
    # One run per output directory (removed again if this run created it and fails); SIGTERM stops the workers.
    finished_shards = []  # shards a SIGTERM must remove: complete ones, from their writing until summary.json
    with owned_directory(output_dir, "--output_dir"), \
            sigterm_stops_workers(lambda: _remove_partial_output(output_dir, finished_shards), SIGTERM_MESSAGE):
        try:
            return _create(input_files, output_dir, tokenizer, options, num_workers, num_outputs, skip_invalid_utf8,
                           progress, chunk_bytes, extra_summary, total_lines, start, finished_shards,
                           format_version)
        except OSError as err:
            if isinstance(err, FileNotFoundError) or err.errno is None:
                raise
            raise BortError(f"{output_dir}: cannot write shards there ({err.strerror}); no shard was written") \
                from None


def _create(input_files, output_dir, tokenizer, options, num_workers, num_outputs, skip_invalid_utf8, progress,
            chunk_bytes, extra_summary, total_lines, start, finished_shards, format_version):
    shard_paths = [os.path.join(output_dir, shard_name(i)) for i in range(num_outputs)]
    _prepare_output_dir(output_dir)
    vocab = MaskingVocab.from_tokenizer(tokenizer, options.whole_word_mask)
    metadata = {"vocab_size": vocab.vocab_size, "pad_id": vocab.eos_id if vocab.pad_id is None else vocab.pad_id,
                "mask_id": vocab.mask_id, "bos_id": vocab.bos_id, "eos_id": vocab.eos_id,
                "max_seq_length": options.max_seq_length}
    state = {"tokenizer": tokenizer, "options": options, "vocab": vocab, "skip_invalid_utf8": skip_invalid_utf8}
    totals = dict.fromkeys(STAT_KEYS, 0)
    writers = []
    from tqdm import tqdm

    try:
        writers = [ShardWriter(path, metadata, format_version) for path in shard_paths]
        with tqdm(total=total_lines, unit="line", unit_scale=True, disable=not progress, desc="lines",
                  smoothing=0.1) as bar:
            chunks = iter_chunks(input_files, chunk_bytes)
            for batch, stats in run_in_workers(process_chunk, chunks, state, num_workers):
                if totals["instances"] == 0 and len(batch):
                    logger.debug("%s", _describe_instance(tokenizer, batch))
                first = totals["instances"]
                if num_outputs == 1:
                    writers[0].append(batch)
                else:
                    for out in range(num_outputs):
                        writers[out].append(batch.take(np.arange((out - first) % num_outputs, len(batch),
                                                                 num_outputs)))
                for key in STAT_KEYS:
                    totals[key] += stats[key]
                bar.update(stats["lines"])
                bar.set_postfix(tokens_per_s=f"{totals['tokens'] / max(time.time() - start, 1e-9):,.0f}",
                                refresh=False)
        where = ",".join(input_files) if len(input_files) <= 3 else f"{input_files[0]} (+{len(input_files) - 1})"
        if totals["documents"] == 0:
            raise BortError(f"{where}: no documents found (expected text with one sentence per line and blank "
                            "lines between documents)")
        if totals["instances"] < num_outputs:
            raise BortError(f"--num_outputs {num_outputs}: only {totals['instances']} instances were created; "
                            "expected at least one per output (lower --num_outputs)")
        finished_shards[:] = shard_paths  # from here on, a SIGTERM removes this run's shards again
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    seconds = time.time() - start
    stale = _stale_shards(output_dir, shard_paths)
    if stale:  # training on the directory would read them beside this run's shards
        logger.warning("removing %d shard(s) of an earlier run with more --num_outputs from %s: %s", len(stale),
                       output_dir, ", ".join(os.path.basename(p) for p in stale))
        for path in stale:
            os.remove(path)
    summary = dict(totals, seconds=round(seconds, 3), tokens_per_second=round(totals["tokens"] / seconds, 1),
                   num_workers=num_workers, num_outputs=num_outputs, input_files=input_files,
                   shards=[os.path.basename(p) for p in shard_paths], format_version=format_version,
                   options=dataclasses.asdict(options), vocab=metadata)
    if extra_summary:
        summary.update(extra_summary)
    write_json(os.path.join(output_dir, SUMMARY_NAME), summary)
    finished_shards.clear()
    logger.info("%d lines, %d documents, %d tokens -> %d instances (%d masked positions) in %d shard(s) in %.1f s: "
                "%.0f tokens/s with %d worker(s)%s", totals["lines"], totals["documents"], totals["tokens"],
                totals["instances"], totals["masked_positions"], num_outputs, seconds, totals["tokens"] / seconds,
                num_workers, f"; skipped {totals['skipped_lines']} invalid lines" if totals["skipped_lines"] else "")
    return summary

