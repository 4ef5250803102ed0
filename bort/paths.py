"""Places the library uses as defaults: in the checkout (editable install: the package lives there), and MXNet's
data home."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGORA_GRIDS = os.path.join(REPO_ROOT, "scripts", "agora_grids")
FINETUNE_CLI = os.path.join(REPO_ROOT, "finetune_bort.py")
RELEASED_BORT = os.path.join(REPO_ROOT, "model", "bort.params")


def mxnet_home():
    """MXNet's and gluon-nlp's data home: $MXNET_HOME, default ~/.mxnet (datasets/ and models/ below it)."""
    return os.path.expanduser(os.environ.get("MXNET_HOME", os.path.join("~", ".mxnet")))
