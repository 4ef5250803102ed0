"""Places in the checkout the library uses as defaults (editable install: the package lives in the checkout)."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGORA_GRIDS = os.path.join(REPO_ROOT, "scripts", "agora_grids")
FINETUNE_CLI = os.path.join(REPO_ROOT, "finetune_bort.py")
RELEASED_BORT = os.path.join(REPO_ROOT, "model", "bort.params")
