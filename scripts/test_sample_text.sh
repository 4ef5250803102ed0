#!/usr/bin/env bash
# Run the tests whose outcome depends on which text test_data/sample_text.txt is (marker `sample_text`: the TEST
# launcher end to end, which must learn on any text, and the checks that branch on the text) with another sample
# text in its place (e.g. gluon-nlp's scripts/bert/sample_text.txt, which the original README has users download),
# on a temporary copy of the checkout: the checkout itself is never modified.
#   scripts/test_sample_text.sh TEXT [pytest args...]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TEXT [pytest args...]" >&2; exit 2; }
text=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -f "$text" ] || { echo "error: $1: sample text not found" >&2; exit 2; }
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BORT_VENV:-$repo/.venv}
"$repo/scripts/setup_env.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bort-sample-text.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/repo"
cd "$repo"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -co --exclude-standard | xargs -0 -I{} find {} -maxdepth 0 -type f -print0 2>/dev/null \
    | tar --null -cf - -T - | tar -xf - -C "$tmp/repo"
else
  tar --exclude=./.venv --exclude=./.git -cf - . | tar -xf - -C "$tmp/repo"
fi
# Real data the tests look for as ../shared stays reachable from the copy.
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$tmp/shared"
cp "$text" "$tmp/repo/test_data/sample_text.txt"
cd "$tmp/repo"
echo "[sample text] $text in test_data/sample_text.txt: the tests marked sample_text" >&2
export PATH="$venv/bin:$PATH"
"$venv/bin/python" -m pytest -q -m sample_text "$@" tests
