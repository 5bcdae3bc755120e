#!/usr/bin/env bash
# Fill torch's compile caches for benchmarks/h200_decoder.py, so that its timed run (next, on the same machine,
# with the same TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR) compiles each row from the caches, not cold.
#
# Compiling is CPU work: one process per row, several at a time, use the host's cores while the GPU idles.
# Each runs one row's steps compiled (and, as its untimed warm-up row, the same row eager: FlexAttention's
# own compile), so every graph the timed run meets is compiled once here. Nothing here is a measurement:
# the rows' figures share the GPU and are thrown away. Rows are grouped in waves by the peak memory
# each row had eager on the H200 (hf-length-grouped 61 GB, dynamic 51 GB, the others 11-22 GB), so a
# wave fits in one H200's memory; fixed (86 GB eager) is left out: the timed run compiles it last, cold.
# transformers' flattening and padlab's one-row packing under flex_attention are left out too: their length
# changes every step and FlexAttention compiles per length (attempt 4: no step in 520 s).
#
# ARGS after the wave seconds go to every process: give the timed run's --warmup, --steps and
# --cudnn-attention, so that the same batches (the plan depends on the step count) compile the same graphs
# (the attention kernel sdpa lowers to is chosen at trace time).
#
#   bash benchmarks/h200_decoder_warm.sh LOGDIR [SECONDS_FIRST_WAVE] [SECONDS_SECOND_WAVE] [ARGS...]
set -u
logdir=${1:?usage: h200_decoder_warm.sh LOGDIR [SECONDS_FIRST_WAVE] [SECONDS_SECOND_WAVE] [ARGS...]}
mkdir -p "$logdir"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.compile-cache/inductor}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.compile-cache/triton}
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
common=(--compile on --attn sdpa,flex_attention
        --oracle-earlier flex_attention=data/benchmarks/h200_decoder_attempt1.log
        --steps 40 --warmup 6 --gen-batch-sizes none "${@:4}")
wave() {
    local limit=$1 row
    shift
    for row in "$@"; do
        i=$((i + 1))
        timeout "$limit" python3 benchmarks/h200_decoder.py "${common[@]}" --rows "$row" \
            --out "$logdir/warm-$i-$(echo "$row" | tr -c 'a-z0-9\n' '_').json" \
            >"$logdir/warm-$i.log" 2>&1 &
    done
    wait
    echo "wave done after ${SECONDS}s: $*"
}
i=0
wave "${2:-300}" 'packed-flex (flex_attention)' 'packed-mask (sdpa)' 'token-budget' 'bucketed' \
     'hf-flattening (sdpa)' 'packed (sdpa)'
wave "${3:-200}" 'hf-length-grouped' 'dynamic'
