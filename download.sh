#!/usr/bin/env bash
# Download the Severstal: Steel Defect Detection competition data with the
# official Kaggle CLI into data/raw/severstal-steel-defect-detection/ (or the
# folder given as the first argument) and unzip it.
#
# Needs: the kaggle CLI (in this checkout: python -m pip install -e '.[kaggle]'; where sever is
# installed from a wheel: pip install 'sever[kaggle]'), an API token
# (~/.config/kaggle/kaggle.json, ~/.kaggle/kaggle.json, or KAGGLE_USERNAME and
# KAGGLE_KEY in the environment), and the competition's rules accepted on
# https://www.kaggle.com/c/severstal-steel-defect-detection/rules
set -euo pipefail

competition=severstal-steel-defect-detection
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/data/raw/$competition}"

fail() { echo "download.sh: error: $*" >&2; exit 1; }

command -v kaggle >/dev/null 2>&1 \
    || fail "the kaggle CLI is not installed. Install it from this checkout with: \
python -m pip install -e '$here[kaggle]'"

config_dir="${KAGGLE_CONFIG_DIR:-}"
if [[ -z "${KAGGLE_USERNAME:-}" || -z "${KAGGLE_KEY:-}" ]]; then
    found=""
    for dir in "$config_dir" "${XDG_CONFIG_HOME:-$HOME/.config}/kaggle" "$HOME/.kaggle"; do
        [[ -n "$dir" && -f "$dir/kaggle.json" ]] && found="$dir/kaggle.json" && break
    done
    [[ -n "$found" ]] || fail "no Kaggle credentials. Create an API token at https://www.kaggle.com/settings \
and save it as ~/.config/kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY."
fi

mkdir -p "$dest"
echo "downloading $competition into $dest"
kaggle competitions download -c "$competition" -p "$dest" \
    || fail "kaggle could not download $competition (have you accepted the competition rules?)"

archive="$dest/$competition.zip"
[[ -f "$archive" ]] || fail "expected $archive after the download"
echo "unzipping $archive"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$archive" -d "$dest"
else
    python3 -m zipfile -e "$archive" "$dest"
fi
rm -f "$archive"
echo "done: $(find "$dest/train_images" -type f | wc -l) training images in $dest"
