"""gluon-nlp 0.x's named RoBERTa vocabulary: its files in the gluon-nlp cache, fetched with gluon-nlp when absent."""
import contextlib
import hashlib
import os
import sys

from bort.errors import BortError
from bort.io import hash_file
from bort.paths import mxnet_home

GLUONNLP_DATASET = "openwebtext_ccnews_stories_books_cased"
# gluon-nlp 0.10 names its cached files <name>-<first 8 hex digits of their sha1>.<ext>
GLUONNLP_FILES = {
    GLUONNLP_DATASET: {
        "vocab": ("openwebtext_ccnews_stories_books_cased-2b804f8f.vocab",
                  "2b804f8f90f9f93c07994b703ce508725061cf43"),
        "merges": ("openai_webtext_bpe_ranks-396d4d8e.json", "396d4d8ec90cb02f4d56e049e0e4add868bcd943"),
    },
}


def gluonnlp_models_dir():
    """Where gluon-nlp 0.x caches vocabularies: $MXNET_HOME/models (default ~/.mxnet/models)."""
    return os.path.join(mxnet_home(), "models")


def file_sha1(path):
    """SHA-1 hex digest of a file: the checksum gluon-nlp and MXNet's model store register for their files."""
    return hash_file(path, hashlib.sha1()).hexdigest()


def download_with_gluonnlp(dataset_name, root):
    """gluon-nlp's own download and checksum logic (network); only reached when the user named the dataset."""
    import bort  # noqa: F401  (thread settings before mxnet)
    from gluonnlp.data import GPT2BPETokenizer
    from gluonnlp.data.utils import _load_pretrained_vocab

    _load_pretrained_vocab(dataset_name, root)
    GPT2BPETokenizer(root)


def fetch_gluonnlp_files(dataset_name, root=None):
    """Paths of gluon-nlp's cached vocabulary and BPE ranks for `dataset_name`, fetched with gluon-nlp if absent."""
    if dataset_name not in GLUONNLP_FILES:
        raise BortError(f"--dataset_name {dataset_name}: unknown; expected one of {sorted(GLUONNLP_FILES)} "
                        "or vocabulary files")
    root = root or gluonnlp_models_dir()
    files = GLUONNLP_FILES[dataset_name]
    paths = {key: os.path.join(root, name) for key, (name, _) in files.items()}
    if all(os.path.isfile(p) and file_sha1(p) == files[k][1] for k, p in paths.items()):
        return paths["vocab"], paths["merges"]
    hint = ("pass local files instead: --vocab_json/--merges (RoBERTa's vocab.json and merges.txt) or "
            "--encoder_json/--vocab_bpe/--dict_txt (fairseq's gpt2_bpe files)")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # gluon-nlp prints its progress; stdout carries results
            download_with_gluonnlp(dataset_name, root)
    except Exception as err:  # noqa: BLE001 - any failure (offline, no gluonnlp) becomes one line
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise BortError(f"--dataset_name {dataset_name}: cannot fetch gluon-nlp's vocabulary into {root} "
                        f"({reason}); {hint}") from None
    for key, path in paths.items():
        if not os.path.isfile(path):
            raise BortError(f"--dataset_name {dataset_name}: {path} is missing after fetching; {hint}")
    return paths["vocab"], paths["merges"]
