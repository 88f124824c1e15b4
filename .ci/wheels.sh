#!/usr/bin/env bash
# Wheels: build the abi3 wheel of ferrotune (maturin) and the pure-Python wheel of
# ferrotune-kernels, install both with plain `pip install` into a fresh virtual environment, and
# run the CLI there with no Rust toolchain on PATH and the repository's python/ out of reach.
# Building needs python3, cargo and maturin (as .ci/run does); the dependencies (torch, ...) come
# from PyPI or pip's cache. About 75 s on the 2-core CI machine with a fast index.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

# The fresh environment holds about 6 GB (torch and its CUDA libraries, 30k files): in /dev/shm,
# when it has room, installing it takes 40 s instead of 55 s and deleting it 1 s instead of 80 s.
base="${TMPDIR:-/tmp}"
if [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -gt $((12 << 20)) ] 2>/dev/null
then
    base=/dev/shm
fi
TMP="$(mktemp -d "$base/ferrotune-wheels.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
DIST="$TMP/dist"
VENV="$TMP/venv"
step() { printf '\n== wheels: %s (%ds)\n' "$*" "$SECONDS"; }

step "build the ferrotune wheel (maturin build --release)"
maturin build --release --out "$DIST"

step "build the ferrotune-kernels wheel (pip wheel --no-deps)"
# From a clean copy: setuptools packs whatever sits in kernels/build/lib, stale modules included.
mkdir "$TMP/kernels"
tar -C kernels --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ --exclude=./dist \
    -cf - . | tar -C "$TMP/kernels" -xf -
python3 -m pip wheel --quiet --no-deps "$TMP/kernels" -w "$DIST"

step "check the wheels' tags and contents"
shopt -s nullglob
native=("$DIST"/ferrotune-*-cp310-abi3-*linux*_x86_64.whl)
kernels=("$DIST"/ferrotune_kernels-*-py3-none-any.whl)
shopt -u nullglob
ls -l "$DIST"
if [ "${#native[@]}" -ne 1 ] || [ "${#kernels[@]}" -ne 1 ]; then
    echo "expected one ferrotune cp310-abi3 linux x86_64 wheel and one py3-none-any" \
        "ferrotune_kernels wheel in $DIST" >&2
    exit 1
fi
python3 - "${native[0]}" "${kernels[0]}" <<'EOF'
"""Each wheel holds exactly its package: every Python file of every subpackage, the files git
tracks there (py.typed, stubs, data), plus the abi3 extension in ferrotune, and its dist-info.
No tests, caches, build leftovers or untracked non-Python files."""

import pathlib
import subprocess
import sys
import zipfile


def source_files(root: pathlib.Path, package: str) -> set[str]:
    files = {p for p in root.rglob("*") if p.suffix in (".py", ".pyi")}
    git = ["git", "ls-files", "-z", "--", str(root)]
    tracked = subprocess.run(git, capture_output=True, text=True, check=False).stdout
    files |= {pathlib.Path(p) for p in tracked.split("\0") if p}
    return {
        f"{package}/{p.relative_to(root).as_posix()}"
        for p in files
        if p.is_file() and "__pycache__" not in p.parts
    }


def check(wheel: str, package: str, source: pathlib.Path, extra: set[str]) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    got = names - info
    want = source_files(source, package) | extra
    problems = []
    if got != want:
        problems.append(f"missing {sorted(want - got)}, unexpected {sorted(got - want)}")
    tests = sorted(n for n in got if "tests" in n.split("/") or "/test_" in n or "conftest" in n)
    if tests:
        problems.append(f"tests in the wheel: {tests}")
    if not any(n.endswith(".dist-info/RECORD") for n in info):
        problems.append("no dist-info/RECORD")
    if problems:
        sys.exit(f"{wheel}: " + "; ".join(problems))
    print(f"{pathlib.Path(wheel).name}: {len(got)} files in {package}/ as expected")


check(sys.argv[1], "ferrotune", pathlib.Path("python/ferrotune"), {"ferrotune/_native.abi3.so"})
check(sys.argv[2], "ferrotune_kernels", pathlib.Path("kernels/ferrotune_kernels"), set())
EOF

step "install both wheels into a fresh virtual environment"
python3 -m venv "$VENV"
# Everything from here on runs with a PATH that has no cargo or rustc, no PYTHONPATH and no
# active environment, from a folder outside the repository.
CLEAN_PATH="$VENV/bin:/usr/bin:/bin"
clean() {
    (cd "$TMP" && env -u PYTHONPATH -u VIRTUAL_ENV -u CARGO_HOME -u RUSTUP_HOME -u RUSTC \
        HF_HUB_OFFLINE=1 PATH="$CLEAN_PATH" "$@")
}
if clean bash -c 'command -v cargo || command -v rustc || command -v maturin'; then
    echo "a Rust toolchain or maturin is still on PATH=$CLEAN_PATH" >&2
    exit 1
fi
# The same pip as .ci/run's environment, so both share pip's HTTP cache (torch is large).
clean python -m pip install --quiet --upgrade pip
# --no-compile: no .pyc for all of torch and transformers up front (half a minute); Python
# compiles what the checks import.
clean python -m pip install --no-compile --progress-bar off "${native[0]}" "${kernels[0]}"

step "run the installed CLI"
version="$(clean ferrotune --version)"
echo "$version"
wheel_version="$(basename "${native[0]}" | cut -d- -f2)"
if [ "$version" != "ferrotune $wheel_version" ]; then
    echo "ferrotune --version says '$version', the wheel is $wheel_version" >&2
    exit 1
fi
clean python - "$VENV" <<'EOF'
import pathlib
import sys

import ferrotune
import ferrotune._native
import ferrotune_kernels

venv = pathlib.Path(sys.argv[1]).resolve()
for module in (ferrotune, ferrotune._native, ferrotune_kernels):
    path = pathlib.Path(module.__file__).resolve()
    assert venv in path.parents, f"{module.__name__} comes from {path}, not {venv}"
    print(f"{module.__name__}: {path.relative_to(venv)}")
EOF

# The demo's first stage: the README's main job, PT only (prep + train + report).
clean ferrotune pipeline "$REPO/examples/pipeline.yaml" --stages pt --out "$TMP/run"
clean python -c 'import json, sys; assert json.load(open(sys.argv[1]))["stage"] == "pt"' \
    "$TMP/run/data/pt/manifest.json"
clean python -c 'import json, sys; assert json.load(open(sys.argv[1]))["stages"]["pt"]["status"] == "done"' \
    "$TMP/run/pipeline.json"
test -f "$TMP/run/models/pt/model.safetensors" && test -f "$TMP/run/report/index.html"

step "ferrotune bench from the installed wheels (quick shapes; datasets/trl are not installed)"
clean ferrotune bench kernels --quick --out "$TMP/bench"
clean ferrotune bench prep pt --quick --input "$REPO/examples/pt" \
    --tokenizer "$REPO/examples/tokenizer" --out "$TMP/bench"
for name in kernels prep_pt; do
    test -s "$TMP/bench/$name.csv" && test -s "$TMP/bench/$name.png"
done

step "done"
