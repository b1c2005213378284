#!/usr/bin/env bash
# The GPU throughput benchmark (tests/bench/gpu_train_step.py) on a CUDA machine, in one command.
#
#     OUT=results bash tests/bench/gpu_run.sh        # on the CUDA machine, from the repository root
#
# It needs Python 3 with torch (CUDA), pytorch-lightning, transformers, timm, pytest and pyyaml, and zsnr's other
# requirements (diffusers, open_clip, webdataset, hydra) either installed or as wheels in .whl/, which it
# installs into $SITE (default /tmp/site). It checks the imports, then runs the gpu-marked tests (the benchmark is one: bench_gpu_train_step.py::
# test_bench_gpu_train_step_full), falling back to the script itself if pytest cannot start. BUDGET (seconds,
# default 400) bounds the benchmark; rows past it are skipped. In $OUT: gpu_train_step.json (rewritten after
# every row: a run cut short keeps its rows), log.txt (everything printed; the table is at its end) and
# env.txt (card, driver, versions).
#
# A CUDA machine without a package index gets the wheels from a machine with one:
#     bash tests/bench/gpu_run.sh fetch               # versions from constraints.txt, ~9 MB, into .whl/
# then copy .whl/ along with the repository (.git/info/exclude keeps it out of git).
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS=(diffusers importlib_metadata lazy-importer open_clip_torch ftfy wcwidth webdataset braceexpand
        hydra-core omegaconf)
SDIST_ONLY=(antlr4-python3-runtime)  # no wheel on PyPI: built here (pure Python)

pin() {  # the exact version constraints.txt gives a package
    grep -i "^$1==" constraints.txt || { echo "constraints.txt has no pin for $1" >&2; exit 2; }
}

fetch() {
    local python="${PYTHON:-.venv/bin/python}" exclude
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    mkdir -p "$(dirname "$exclude")" .whl
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    local pins=() name
    for name in "${WHEELS[@]}"; do pins+=("$(pin "$name")"); done
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pins[@]}" || exit 1
    for name in "${SDIST_ONLY[@]}"; do
        "$python" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$(pin "$name")" || exit 1
    done
    ls -la .whl && du -sh .whl
}

on_device() {
    : "${OUT:?set OUT to the folder the results go to: OUT=results bash tests/bench/gpu_run.sh}"
    export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
    local SITE="${SITE:-/tmp/site}"
    mkdir -p "$OUT"
    exec > >(tee "$OUT/log.txt") 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
        --format=csv | tee "$OUT/env.txt"  # read-only queries
    if compgen -G ".whl/*.whl" >/dev/null; then  # a machine without a package index: the fetched wheels
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl || exit 3
    fi
    export PYTHONPATH="$SITE:$PWD/src:$PWD/tests/bench"
    python3 - <<'EOF' | tee -a "$OUT/env.txt" || exit 4
import diffusers, hydra, open_clip, pytorch_lightning, timm, torch, transformers, webdataset
import zsnr.training
print({m.__name__: m.__version__ for m in (torch, diffusers, pytorch_lightning, transformers, timm, open_clip)},
      "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA", "cudnn", torch.backends.cudnn.version())
EOF
    export ZSNR_BENCH_OUT="$OUT/gpu_train_step.json" ZSNR_BENCH_BUDGET_S="${BUDGET:-400}"
    local limit=$((${BUDGET:-400} + 120)) rc
    timeout "$limit" python3 -m pytest -q -s -m gpu -p no:cacheprovider --continue-on-collection-errors tests
    rc=$?
    if [[ ! -s "$ZSNR_BENCH_OUT" ]]; then  # pytest could not start, or never reached the benchmark
        echo "pytest gave rc $rc and no benchmark JSON: running the script directly"
        timeout "$limit" python3 tests/bench/gpu_train_step.py --out "$ZSNR_BENCH_OUT" --budget-s "$ZSNR_BENCH_BUDGET_S"
        rc=$?
    fi
    return "$rc"
}

case "${1:-device}" in
    fetch) fetch ;;
    device) on_device ;;
    *) echo "usage: bash tests/bench/gpu_run.sh [fetch|device]" >&2; exit 2 ;;
esac
