#!/usr/bin/env bash
# The GPU path proven in one prepared run (issue 16): float16 training, one GPU per worker and the
# mxnet-cu112 install, on a bare Linux machine with an NVIDIA GPU and Python 3.11, in under 8 minutes.
#
#   bash bench/gpu_check.sh [FOLDER] [--out FOLDER] [--wheels DIR] [--python PY] [--budget S]
#   bash bench/gpu_check.sh --dry-run [FOLDER]     # the same steps on the CPU, tiny sizes
#
# Steps, each timed and recorded with its status in FOLDER/gpu_check.json (default $OUT, else
# work_dirs/gpu_check), written after every step, so a run that dies or is killed leaves what it had:
#   machine       nvidia-smi: GPUs, driver, compute capability; the Pythons there
#   requirements  requirements.txt with mxnet==1.9.1 replaced by mxnet-cu112==1.9.1, checked
#                 + NVIDIA's CUDA 11.8 library wheels, which libmxnet.so links to (it bundles none)
#   venv          a venv (work_dirs/gpu_check_venv, reused when its requirements are unchanged) with
#                 those pins + onnxruntime (no Horovod: one GPU), the CUDA wheels' lib folders on
#                 LD_LIBRARY_PATH, every library of libmxnet.so resolved (ldd) and mxnet imported;
#                 needs Python 3.8-3.11 and a package index (or --wheels DIR: pip --no-index
#                 --find-links DIR), about 3 GB of downloads
#   probe         what MXNet sees: GPU count, CUDA, cuDNN, compute capability, the arches compiled into
#                 libmxnet.so, whether kernels are JIT-compiled for this chip, first-kernel times,
#                 float32/float16 convolutions, a fused elementwise graph (else MXNET_USE_FUSION=0)
#   tests         pytest -m gpu tests/test_gpu.py (float16 rewrite types + loss scaling on the GPU,
#                 a float32 step equal to the CPU's, float16 training + export + verify)
#   throughput    bench/train_throughput.py: 30 steps at batch 128, MobileFaceNet and IResNet-50,
#                 float32 and float16, ArcFace over 100,000 classes (FOLDER/throughput.json)
# A failed step says so in one line (and in the JSON); the check stops where later steps cannot
# run (no GPU, no venv, no working convolution) and exits 1 naming the first failed step.
#
# Known before any run: mxnet-cu112 1.9.1's libmxnet.so holds machine code for sm_50, 60, 70, 80 and
# 86 and no PTX (its .nv_fatbin section, read by gpu_probe.py), so Hopper GPUs (H100, H200: sm_90)
# and newer cannot run MXNet's kernels, JIT or not: the probe then reports "impossible" and stops.
#
# --dry-run: no venv, no pip: the current interpreter (--python, $GPU_CHECK_PYTHON, .venv/bin/python
# or python3, with the CPU mxnet) runs the same steps on the CPU with tiny sizes; the tests run on the
# CPU (RECOGNITION_GPU_TESTS_ON_CPU=1, bfloat16 standing in for float16 where the CPU has it); float16
# throughput is left out where the CPU has no float16 convolution (MXNet's has none); the GPU run's
# throughput command line is checked by train_throughput.py's own parser.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DRY=0 OUTDIR="" WHEELS="" BASE_PY="" BUDGET="" VENV="${GPU_CHECK_VENV:-$ROOT/work_dirs/gpu_check_venv}"
usage() { sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUTDIR=${2:?--out needs a folder}; shift ;;
    --wheels) WHEELS=${2:?--wheels needs a folder of wheels}; shift ;;
    --python) BASE_PY=${2:?--python needs an interpreter}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --venv) VENV=${2:?--venv needs a folder}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (--help)" >&2; exit 2 ;;
    *) OUTDIR=$1 ;;
  esac
  shift
done
case "$BUDGET" in ''|*[!0-9]*) [ -n "$BUDGET" ] && { echo "gpu_check: --budget $BUDGET: not a number of seconds" >&2; exit 2; } ;; esac
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then echo "gpu_check: --wheels $WHEELS: not a folder" >&2; exit 2; fi

OUTDIR=${OUTDIR:-${OUT:-$ROOT/work_dirs/gpu_check}}
mkdir -p "$OUTDIR" || { echo "gpu_check: cannot make $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
REPORT=$OUTDIR/gpu_check.json
LOG=$OUTDIR/gpu_check.log
: > "$LOG"

if [ "$DRY" = 1 ]; then
  MODE=dry-run CTX=cpu BUDGET=${BUDGET:-300}
  if [ -z "$BASE_PY" ]; then
    BASE_PY=${GPU_CHECK_PYTHON:-}
    [ -z "$BASE_PY" ] && [ -x "$ROOT/.venv/bin/python" ] && BASE_PY=$ROOT/.venv/bin/python
    BASE_PY=${BASE_PY:-python3}
  fi
  PY=$BASE_PY
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} RECOGNITION_GPU_TESTS_ON_CPU=1
else
  MODE=gpu CTX=gpu BUDGET=${BUDGET:-480}
  if [ -z "$BASE_PY" ]; then
    BASE_PY=$(command -v python3.11 || command -v python3 || true)
  fi
  PY=$VENV/bin/python
  # no cuDNN autotuning (each new shape would time every algorithm: minutes under PTX JIT);
  # the JIT's output cached for every later process (the cache's largest size, 4 GiB)
  export MXNET_CUDNN_AUTOTUNE_DEFAULT=0 CUDA_CACHE_MAXSIZE=4294967296 \
    CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$ROOT/work_dirs/gpu_check_cuda_cache}
fi
if ! HPY=$(command -v "$BASE_PY"); then
  echo "gpu_check: no Python interpreter '$BASE_PY' (give --python PY)" >&2
  exit 2
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export ROOT DRY MODE CTX WORK OUTDIR WHEELS BASE_PY PY HPY VENV LOG
START=$(date +%s)
DEADLINE=$((START + BUDGET))
"$HPY" bench/gpu_probe.py init "$REPORT" "$MODE" "$BUDGET" "python=$BASE_PY" "venv=$([ "$DRY" = 1 ] && echo none || echo "$VENV")" \
  "wheels=${WHEELS:-none (package index)}" "MXNET_CUDNN_AUTOTUNE_DEFAULT=${MXNET_CUDNN_AUTOTUNE_DEFAULT:-unset}" \
  "CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-unset}" "PYTHONPATH=$PYTHONPATH" || { echo "gpu_check: $HPY cannot write $REPORT" >&2; exit 2; }
echo "gpu_check: $MODE run, budget $BUDGET s, report $REPORT, log $LOG"

# data FILE KEY=VALUE...: a JSON object of strings (summary, error, ...) for a step's record
data() { "$HPY" -c 'import json, sys; json.dump(dict(a.split("=", 1) for a in sys.argv[2:]), open(sys.argv[1], "w"))' "$@"; }
export -f data

# step NAME LIMIT [NOTE]: run the function step_NAME under a time limit (capped by the budget), its
# output appended to the log; exit 0 = ok, 3 = skipped, anything else = failed. It may write
# $WORK/NAME.json (summary, error, its data), which goes into the report under NAME.
step() {
  local name=$1 limit=$2 note=${3:-} left status rc start offset
  left=$((DEADLINE - $(date +%s)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    "$HPY" bench/gpu_probe.py record "$REPORT" "$name" failed 0 0 "" "" "no time left in the $BUDGET s budget"
    return 1
  fi
  offset=$(stat -c %s "$LOG")
  echo "===== $name (limit $limit s) $(date +%T) =====" >> "$LOG"
  start=$(date +%s)
  timeout -k 10 "$limit" bash -c "step_$name" >> "$LOG" 2>&1
  rc=$?
  tail -c +$((offset + 1)) "$LOG" > "$WORK/$name.log"
  case $rc in
    0) status=ok ;;
    3) status=skipped ;;
    124|137) status=failed; note="ran past its $limit s limit${note:+; $note}" ;;
    *) status=failed ;;
  esac
  "$HPY" bench/gpu_probe.py record "$REPORT" "$name" "$status" "$(($(date +%s) - start))" "$limit" \
    "$WORK/$name.json" "$WORK/$name.log" "$note"
  [ "$status" != failed ]
}

# the steps that cannot run once an earlier one has failed
skip_rest() {
  local after=$1; shift
  for name in "$@"; do
    data "$WORK/$name.json" "summary=not run: step $after failed"
    "$HPY" bench/gpu_probe.py record "$REPORT" "$name" skipped 0 0 "$WORK/$name.json"
  done
}

finish() {
  "$HPY" bench/gpu_probe.py finish "$REPORT"
  exit $?
}

step_machine() {
  "$HPY" bench/gpu_probe.py machine > "$WORK/machine.json" || exit 1
  cat "$WORK/machine.json"
  if ! "$HPY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["gpus"] else 1)' "$WORK/machine.json"; then
    if [ "$DRY" = 1 ]; then exit 0; fi
    echo "error: no NVIDIA GPU: nvidia-smi is missing or lists none"
    exit 1
  fi
}

step_requirements() {
  "$HPY" bench/gpu_probe.py requirements "$ROOT/requirements.txt" "$WORK/requirements-gpu.txt" > "$WORK/requirements.json" || exit 1
  cat "$WORK/requirements-gpu.txt"
}

# the install commands, the same in both modes: the dry run prints them, the GPU run runs them
install() {
  local src=()
  [ -n "$WHEELS" ] && src=(--no-index --find-links "$WHEELS")
  run_or_print "$PY" -m pip install --quiet --progress-bar off ${src[@]+"${src[@]}"} --upgrade "pip<25" "setuptools<70" wheel &&
  run_or_print "$PY" -m pip install --progress-bar off --prefer-binary ${src[@]+"${src[@]}"} -r "$WORK/requirements-gpu.txt" &&
  # as the Makefile: onnxruntime's wheels ask for numpy>=1.24 but run on 1.23.5 (same C API)
  run_or_print "$PY" -m pip install --quiet --progress-bar off --no-deps ${src[@]+"${src[@]}"} onnxruntime==1.15.1
}
run_or_print() {
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@" || { echo "error: pip failed: $*"; return 1; }
}

# pip can reach a package index (one small download), or the one line why not
index_check() {
  local out
  if out=$("$1" -m pip download --no-deps --no-cache-dir --timeout 15 --retries 0 -d "$WORK/index_probe" six 2>&1); then
    return 0
  fi
  echo "pip reaches no package index ($(echo "$out" | grep -v '^ *$' | tail -1 | cut -c1-200))"
  return 1
}

# the lib folders of NVIDIA's CUDA wheels in the venv (mxnet-cu112 links to their libraries), ':'-ended
cuda_library_path() {
  local folder
  for folder in "$VENV"/lib/python*/site-packages/nvidia/*/lib; do
    [ -d "$folder" ] && printf '%s:' "$folder"
  done
  return 0
}

# libmxnet.so's libraries all found by the loader, and mxnet imports (exit 1 with data written if not)
check_mxnet() {
  local library missing versions
  library=$("$PY" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("mxnet").origin), "libmxnet.so"))') \
    || { data "$WORK/venv.json" "error=no mxnet package in $PY"; return 1; }
  echo "+ ldd $library (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
  if ! missing=$("$HPY" bench/gpu_probe.py unresolved "$library"); then
    case " $missing " in
      *" libcuda.so.1 "*) missing="$missing (libcuda.so.1 is the NVIDIA driver's: not on the loader's path)" ;;
    esac
    data "$WORK/venv.json" "error=the loader cannot find what libmxnet.so links to: $missing"
    return 1
  fi
  versions=$("$PY" -c 'import mxnet, numpy; print("mxnet", mxnet.__version__, "numpy", numpy.__version__)' 2>&1) \
    || { data "$WORK/venv.json" "error=mxnet does not import: $(echo "$versions" | tail -1)"; return 1; }
  echo "$versions"
}

make_venv() {
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV" && return 0
  data "$WORK/venv.json" "error=$BASE_PY -m venv $VENV failed (no ensurepip? install python3-venv)"
  return 1
}

step_venv() {
  local version problems="" stamp pip_py reach made=0 t0 versions
  if [ "$DRY" = 1 ]; then
    install > "$WORK/would_run.txt"
    cat "$WORK/would_run.txt"
    echo "CUDA library path (none on the CPU): $(cuda_library_path)"
    check_mxnet || exit 1
    "$PY" -c 'import pytest, onnx, onnxruntime, cv2, yaml' \
      || { data "$WORK/venv.json" "error=the dry run's interpreter $PY lacks a package the steps need"; exit 1; }
    data "$WORK/venv.json" "summary=dry run: no venv made and nothing installed; $PY (CPU mxnet) runs the steps" \
      "would_run=$(tr '\n' ';' < "$WORK/would_run.txt")"
    exit 3
  fi
  version=$("$BASE_PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') \
    || { data "$WORK/venv.json" "error=$BASE_PY does not run"; exit 1; }
  if ! "$BASE_PY" bench/gpu_probe.py python-ok; then
    problems="Python $version ($BASE_PY): the pins (numpy 1.23.5, MXNet 1.9.1) need Python 3.8-3.11, give --python python3.11"
  fi
  stamp="$(cat "$WORK/requirements-gpu.txt") wheels=$WHEELS python=$version"
  export LD_LIBRARY_PATH="$(cuda_library_path)${LD_LIBRARY_PATH:-}"
  if [ -z "$problems" ] && [ -x "$PY" ] && [ "$(cat "$VENV/.gpu_check_stamp" 2>/dev/null)" = "$stamp" ]; then
    check_mxnet || exit 1
    data "$WORK/venv.json" "summary=reused $VENV (same requirements, Python $version)" "python=$version"
    exit 0
  fi
  if [ -z "$WHEELS" ]; then
    pip_py=$BASE_PY
    if ! "$BASE_PY" -m pip --version > /dev/null 2>&1; then
      pip_py=""
      if [ -z "$problems" ]; then make_venv || exit 1; made=1 pip_py=$PY; fi
    fi
    if [ -n "$pip_py" ] && ! reach=$(index_check "$pip_py"); then
      problems="${problems:+$problems; }$reach: give a folder of wheels with --wheels DIR"
    fi
  fi
  if [ -n "$problems" ]; then
    data "$WORK/venv.json" "error=$problems; stopping" "python=$version"
    exit 1
  fi
  [ "$made" = 1 ] || make_venv || exit 1
  t0=$(date +%s)
  install || { data "$WORK/venv.json" "error=$(grep '^error: pip failed' "$LOG" | tail -1 | cut -c8-300)" "python=$version"; exit 1; }
  if "$PY" -m pip show mxnet > /dev/null 2>&1; then
    data "$WORK/venv.json" "error=the CPU mxnet package got installed beside mxnet-cu112"
    exit 1
  fi
  export LD_LIBRARY_PATH="$(cuda_library_path)${LD_LIBRARY_PATH:-}"
  versions=$(check_mxnet) || exit 1
  versions=$(echo "$versions" | tail -1)
  echo "$stamp" > "$VENV/.gpu_check_stamp"
  data "$WORK/venv.json" "summary=$VENV, Python $version: $versions ($(( $(date +%s) - t0 )) s of pip)" \
    "python=$version" "installed=$("$PY" -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"
}

step_probe() {
  "$PY" bench/gpu_probe.py probe --ctx "$CTX" --out "$WORK/probe.json"
}

step_tests() {
  mkdir -p "$WORK/details"
  local rc settings=(GPU_CHECK_DETAILS="$WORK/details")
  # on the GPU: full float32 in the step compared with the CPU's (no TF32 in cuDNN and cuBLAS)
  [ "$DRY" = 1 ] || settings+=(NVIDIA_TF32_OVERRIDE=0)
  rm -f "$OUTDIR/gpu_tests.xml"
  echo "+ ${settings[*]} $PY -m pytest -m gpu tests/test_gpu.py"
  env "${settings[@]}" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider \
    --junitxml="$OUTDIR/gpu_tests.xml"
  rc=$?
  [ -f "$OUTDIR/gpu_tests.xml" ] || { data "$WORK/tests.json" "error=pytest wrote no results (exit $rc)"; exit 1; }
  "$HPY" bench/gpu_probe.py junit "$OUTDIR/gpu_tests.xml" "$WORK/details" > "$WORK/tests.json" || exit 1
  "$HPY" - "$WORK/tests.json" "$rc" "$DRY" <<'EOF'
import json, sys
path, rc, dry = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
r = json.load(open(path))
c = r["counts"]
problems = []
if rc != 0:
    problems.append(f"pytest exit {rc}")
if c["passed"] == 0:
    problems.append("no test passed")
if not dry and c["skipped"]:  # on the GPU machine nothing may be left unproven
    problems.append(f"{c['skipped']} skipped on the GPU machine")
if problems:
    bad = [t for t in r["tests"] if t["outcome"] in ("failed", "error") or (not dry and t["outcome"] == "skipped")]
    r["error"] = f"{r['summary']}; " + "; ".join(problems) + "".join(
        f"; {t['name']}: {t.get('message', '')[:200]}" for t in bad[:3])
json.dump(r, open(path, "w"), indent=2)
sys.exit(1 if problems else 0)
EOF
}

step_throughput() {
  local args need models
  # the GPU run's command line (checked by the script's own parser in the dry run too)
  local GPU_ARGS=(--models mobilefacenet,iresnet50 --modes hybrid --precisions float32,float16 --classes 100000
                  --batch-size 128 --steps 30 --warmup 3 --ctx gpu)
  "$PY" bench/gpu_probe.py check-args "${GPU_ARGS[@]}" --json-out "$OUTDIR/throughput.json" \
    || { data "$WORK/throughput.json" "error=bench/train_throughput.py refuses the GPU run's arguments: ${GPU_ARGS[*]}"; exit 1; }
  if [ "$DRY" = 1 ]; then
    need=float32
    # float16 only where this CPU runs float16 convolutions (MXNet's CPU kernels have none)
    if "$HPY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("float16_convolution") else 1)' "$WORK/probe.json" 2>/dev/null; then
      need=float32,float16
    fi
    models=mobilefacenet
    args=(--models $models --modes hybrid --precisions $need --classes 100 --batch-size 4 --steps 2 --warmup 1
          --ctx cpu --threads 1)
  else
    need=float32,float16 models=mobilefacenet,iresnet50 args=("${GPU_ARGS[@]}")
  fi
  "$PY" bench/gpu_probe.py check-args "${args[@]}" > /dev/null \
    || { data "$WORK/throughput.json" "error=bench/train_throughput.py refuses: ${args[*]}"; exit 1; }
  rm -f "$OUTDIR/throughput.json"
  echo "+ $PY bench/train_throughput.py ${args[*]} --json-out $OUTDIR/throughput.json"
  "$PY" bench/train_throughput.py "${args[@]}" --json-out "$OUTDIR/throughput.json" > /dev/null \
    || { data "$WORK/throughput.json" "error=bench/train_throughput.py failed"; exit 1; }
  "$HPY" bench/gpu_probe.py throughput "$OUTDIR/throughput.json" --models "$models" --need "$need" > "$WORK/throughput.json"
}
export -f step_machine step_requirements install run_or_print index_check cuda_library_path check_mxnet make_venv \
  step_venv step_probe step_tests step_throughput

step machine 60 || { [ "$DRY" = 1 ] || { skip_rest machine requirements venv probe tests throughput; finish; }; }
step requirements 30 || { skip_rest requirements venv probe tests throughput; finish; }
step venv 330 || { skip_rest venv probe tests throughput; finish; }
# the CUDA 11 libraries mxnet-cu112 links to, from the venv's NVIDIA wheels (none in the dry run)
export LD_LIBRARY_PATH="$(cuda_library_path)${LD_LIBRARY_PATH:-}"
step probe 180 || { skip_rest probe tests throughput; finish; }
# what the probe found wrong (NVRTC of CUDA 11.2 on a newer chip, say) is set for the later steps
eval "$("$HPY" -c 'import json, shlex, sys
for k, v in (json.load(open(sys.argv[1])).get("recommended_environment") or {}).items():
    print(f"export {k}={shlex.quote(v)}")' "$WORK/probe.json" 2>/dev/null)"
FLOAT16_NOTE=""
if [ "$DRY" = 1 ] && ! "$HPY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("float16_convolution") else 1)' "$WORK/probe.json" 2>/dev/null; then
  FLOAT16_NOTE="float16 not timed: this CPU's MXNet has no float16 convolution (the GPU run times it)"
fi
step tests 200
step throughput 240 "$FLOAT16_NOTE"
finish
