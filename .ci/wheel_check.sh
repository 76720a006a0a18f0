#!/usr/bin/env bash
# CI: build sever's wheel, install it in a second virtual environment and run it from a
# folder outside the checkout, so a file missing from the wheel (package data, the console
# script) fails here and not on a user's machine.
#
# The second venv borrows the first one's dependencies through a .pth file (installing torch
# twice would double CI time); only sever itself comes from the wheel (--no-deps).
# Run with the first venv active: .ci/wheel_check.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
wheel=("$work"/dist/sever-*.whl)

first_site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python -m venv "$work/venv"
second_site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$first_site" > "$second_site/first-venv-dependencies.pth"
"$work/venv/bin/python" -m pip install --quiet --no-deps "${wheel[0]}"

cd "$work"  # outside the checkout: only the installed wheel can be imported
sever="$work/venv/bin/sever"
located="$("$work/venv/bin/python" -c 'import sever; print(sever.__file__)')"
[[ "$located" == "$second_site"/* ]] || { echo "wheel_check: sever imported from $located" >&2; exit 1; }
"$sever" --version
"$sever" demo-data -o "$work/demo"
"$sever" check-data "$work/demo"
echo "wheel_check: ${wheel[0]##*/} installs and runs outside the checkout"
