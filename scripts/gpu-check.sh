#!/usr/bin/env bash
# The GPU check: prepared here, run on a GPU machine as ONE command of at most 8 minutes.
#
#   scripts/gpu-check.sh --build
#       Builds (here, no GPU needed) a stripped sm_90 CUDA moshid into target-gpucheck/
#       (git-ignored; carried to the GPU machine with the working tree). ~15-50 min on 2 cores,
#       at nice 19 (GPU_CHECK_NICE=N to change it). Let it finish: candle-kernels' nvcc stage
#       records what it compiled only at its end, so an interrupted build starts it again.
#   scripts/gpu-check.sh --device cuda [--out DIR] [--budget SECONDS]
#       On the GPU machine: finds the CUDA libraries (Python site-packages), then writes JSON
#       lines to DIR/gpu-check.jsonl (DIR defaults to $OUT): nvidia-smi facts, GPU copy
#       bandwidth (torch), Mimi and LM parity vs the committed references in f32/bf16/f16,
#       `bench lm` on 7B-shaped random q8_0/q4_0 GGUF and bf16 safetensors (short and full
#       window, achieved GB/s; and batches of 4 and 8 conversations), `bench mimi` (and f32
#       batches of 1, 4 and 8 streams), the demo pipeline. Each part is time-boxed; what
#       finished is written even when the budget (default 450 s) runs out.
#   scripts/gpu-check.sh --device cpu [--bin PATH] [--quick]
#       The same sequence with the CPU binary (default target/release/moshid); --quick uses
#       the fixture-sized LM instead of the 7B shape (what the test runs).
#   scripts/gpu-check.sh --find-libs [ROOT...]
#       Prints the LD_LIBRARY_PATH the device mode would use (ROOTs: site-packages folders;
#       default: python3's) and exits 1 if a library the binary needs is missing. The driver's
#       libcuda.so.1 is looked for in GPU_CHECK_DRIVER_DIRS (colon-separated; default
#       /usr/local/nvidia/lib64 and the usual system folders).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pack=$root/target-gpucheck

mode="" device="" out="${OUT:-}" bin="" budget=450 quick=0 roots=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) mode=build ;;
    --device) mode=device; device=$2; shift ;;
    --out) out=$2; shift ;;
    --bin) bin=$2; shift ;;
    --budget) budget=$2; shift ;;
    --quick) quick=1 ;;
    --find-libs) mode=libs; shift; roots=("$@"); break ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------
# Library lookup. The CUDA 13 wheels unpack as site-packages/nvidia/cu13/lib (cuda-toolkit)
# or site-packages/nvidia/<component>/lib (nvidia-cublas, nvidia-cuda-runtime, ...);
# libcuda.so.1 comes with the driver (/usr/local/nvidia/lib64 on the GPU machine).
needed_libs="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10"

site_roots() {
  python3 - <<'EOF' 2>/dev/null || true
import site, sys
dirs = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
try:
    import nvidia, os
    dirs += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
seen = set()
for d in dirs:
    if d and d not in seen:
        seen.add(d)
        print(d)
EOF
}

# Folders holding the needed libraries under ROOTs, then the driver's; one per line.
lib_dirs() {
  local r d
  for r in "$@"; do
    for d in "$r"/nvidia/cu13/lib "$r"/nvidia/*/lib "$r"/nvidia/*/lib64; do
      [ -d "$d" ] && ls "$d"/lib*.so* >/dev/null 2>&1 && echo "$d"
    done
  done
  local drv=${GPU_CHECK_DRIVER_DIRS:-/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/lib/x86_64-linux-gnu:/usr/lib64:/usr/local/cuda/lib64:/usr/lib/aarch64-linux-gnu/tegra}
  IFS=: read -ra drvs <<<"$drv"
  for d in "${drvs[@]}"; do
    [ -e "$d/libcuda.so.1" ] && echo "$d"
  done
  return 0
}

# Sets LIBPATH (colon-separated) and MISSING (space-separated) for ROOTs.
find_libs() {
  LIBPATH=$(lib_dirs "$@" | awk '!seen[$0]++' | paste -sd: -)
  MISSING=""
  local l d found
  for l in $needed_libs libcuda.so.1; do
    found=0
    IFS=: read -ra ds <<<"$LIBPATH"
    for d in "${ds[@]}"; do [ -e "$d/$l" ] && { found=1; break; }; done
    [ $found = 1 ] || MISSING="$MISSING $l"
  done
  MISSING=${MISSING# }
}

if [ "$mode" = libs ]; then
  [ ${#roots[@]} -gt 0 ] || mapfile -t roots < <(site_roots)
  find_libs "${roots[@]}"
  echo "LD_LIBRARY_PATH=$LIBPATH"
  [ -z "$MISSING" ] || { echo "missing: $MISSING" >&2; exit 1; }
  exit 0
fi

# ---------------------------------------------------------------------------------------
if [ "$mode" = build ]; then
  t0=$(date +%s)
  CUDA_BUILD_TESTS=0 CUDA_TARGET_DIR="$root/target-cuda" nice -n "${GPU_CHECK_NICE:-19}" ./cross/cuda-build.sh 90
  mkdir -p "$pack"
  rm -f "$pack"/moshid "$pack"/moshid.xz
  strip -o "$pack/moshid" "$root/target-cuda/moshid-sm90"
  raw=$(stat -c %s "$pack/moshid")
  # The carry limit is 64 MiB for everything; compress when the binary alone is near it.
  if [ "$raw" -gt $((40 << 20)) ]; then
    xz -T0 -6 "$pack/moshid"
  fi
  total=$(du -sb "$pack" | cut -f1)
  echo "gpu-check: $pack holds $(ls "$pack") ($raw bytes stripped; $total bytes to carry) after $(( $(date +%s) - t0 )) s"
  [ "$total" -le $((64 << 20)) ] || { echo "gpu-check: $total bytes exceed the 64 MiB carry limit" >&2; exit 1; }
  echo "run it there (one command, carry [\"target-gpucheck\"]):  scripts/gpu-check.sh --device cuda"
  exit 0
fi

[ "$mode" = device ] || { echo "gpu-check: give --build, --device cuda|cpu or --find-libs (see --help)" >&2; exit 2; }
case "$device" in cpu|cuda|cuda:*) ;; *) echo "gpu-check: --device cpu or cuda" >&2; exit 2 ;; esac
[ -n "$out" ] || { echo "gpu-check: give --out DIR (or set \$OUT)" >&2; exit 2; }
mkdir -p "$out/logs"
jsonl=$out/gpu-check.jsonl
: >"$jsonl"
start=$(date +%s)
work=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
trap 'rm -rf "$work"' EXIT

# One JSON line: `emit PART key=value...` (values that parse as JSON stay JSON).
emit() {
  python3 - "$@" >>"$jsonl" <<'EOF'
import json, sys
part, kv = sys.argv[1], sys.argv[2:]
line = {"part": part}
for a in kv:
    k, _, v = a.partition("=")
    try:
        line[k] = json.loads(v)
    except ValueError:
        line[k] = v
print(json.dumps(line))
EOF
}

left() { echo $(( budget - ($(date +%s) - start) )); }

# `run PART SECONDS CMD...`: runs CMD with at most SECONDS (less if the budget is nearly
# spent), its stdout's JSON lines go to the file tagged with PART; a failure or a timeout
# becomes a JSON line too. Returns CMD's status.
run() {
  local part=$1 secs=$2 rem rc=0 log
  shift 2
  rem=$(( $(left) - 10 ))
  [ "$secs" -le "$rem" ] || secs=$rem
  if [ "$secs" -lt 5 ]; then
    emit "$part" skipped=budget "cmd=$*"
    return 124
  fi
  log=$out/logs/$part.$(date +%s%N).log
  timeout --kill-after=5 "$secs" "$@" >"$log.out" 2>"$log" || rc=$?
  python3 - "$part" "$log.out" "$rc" "$secs" >>"$jsonl" <<'EOF' || true
import json, sys
part, path, rc, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
n = 0
for l in open(path, errors="replace"):
    l = l.strip()
    if l.startswith("{"):
        try:
            d = json.loads(l)
        except ValueError:
            continue
        print(json.dumps({"part": part, **d}))
        n += 1
if rc != 0:
    print(json.dumps({"part": part, "rc": rc, "timed_out": rc in (124, 137), "limit_s": secs, "log": path.replace(".out", "")}))
EOF
  [ "$rc" = 0 ] || tail -n 5 "$log" >&2 || true
  return $rc
}

# The binary.
if [ -z "$bin" ]; then
  if [ "$device" = cpu ]; then
    bin=$root/target/release/moshid
  elif [ -x "$pack/moshid" ]; then
    bin=$pack/moshid
  elif [ -f "$pack/moshid.xz" ]; then
    xz -dc "$pack/moshid.xz" >"$work/moshid" && chmod +x "$work/moshid"
    bin=$work/moshid
  fi
fi
[ -n "$bin" ] && [ -x "$bin" ] || { emit setup error="no moshid binary (run --build first, or give --bin)"; exit 1; }

# 1. Libraries and facts.
if [ "$device" != cpu ]; then
  mapfile -t roots < <(site_roots)
  find_libs "${roots[@]}"
  export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  unresolved=$(ldd "$bin" 2>&1 | awk '/not found/ {print $1}' | paste -sd, -)
  emit libs "ld_library_path=$LIBPATH" "missing=\"$MISSING\"" "ldd_not_found=\"$unresolved\""
  q='name,compute_cap,memory.total,memory.used,driver_version,clocks.max.memory,clocks.max.sm,power.limit,pcie.link.gen.max'
  if smi=$(timeout 20 nvidia-smi --query-gpu=$q --format=csv,noheader,nounits 2>&1 | head -n 1); then
    python3 - "$q" "$smi" >>"$jsonl" <<'EOF'
import json, sys
keys, vals = sys.argv[1].split(","), [v.strip() for v in sys.argv[2].split(",")]
print(json.dumps({"part": "nvidia-smi", **dict(zip(keys, vals))}))
EOF
  else
    emit nvidia-smi "error=$smi"
  fi
  # The GPU's own copy and read bandwidth (torch), the yardstick for the LM's GB/s.
  run bandwidth 60 python3 - <<'EOF' || true
import json, time, torch
n = 1 << 30
x = torch.empty(n, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
f = torch.ones(n // 4, dtype=torch.float32, device="cuda")
def best(fn, reps=10):
    fn(); torch.cuda.synchronize()
    b = 0.0
    for _ in range(reps):
        t = time.perf_counter(); fn(); torch.cuda.synchronize()
        b = max(b, 1.0 / (time.perf_counter() - t))
    return b
copy = 2 * n * best(lambda: y.copy_(x)) / 1e9
read = n * best(lambda: f.sum()) / 1e9
print(json.dumps({"copy_gbps": round(copy, 1), "read_gbps": round(read, 1),
                  "bytes": n, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0)}))
EOF
else
  emit host "cpu=\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\"" \
    "threads=$(nproc)" "mem_total_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
fi

# 2. Parity with the committed references, per dtype.
for dt in f32 bf16 f16; do
  run parity 60 "$bin" parity --fixtures models/tests/fixtures --device "$device" --dtype "$dt" || true
done

# 3. The LM on 7B-shaped random weights (--quick: the fixture-sized LM).
gpu_bw=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d.get("part") == "bandwidth" and "copy_gbps" in d:
        print(d["copy_gbps"], d["read_gbps"]); break' "$jsonl" 2>/dev/null || true)
lmcfg=() steps=20
if [ $quick = 1 ]; then lmcfg=(--lm-config models/tests/fixtures/lm/config.json); steps=3; fi
for ty in q8_0 q4_0 bf16; do
  ext=gguf; [ $ty = bf16 ] && ext=safetensors
  f=$work/lm-$ty.$ext
  run lm-write 120 "$bin" quantize --random-seed 1 --type $ty --out "$f" "${lmcfg[@]}" || continue
  emit lm-write "type=$ty" "bytes=$(stat -c %s "$f")"
  for full in "" --full-context; do
    bw=(); [ "$device" = cpu ] && [ $quick = 0 ] && bw=(--bandwidth)
    run bench-lm 90 "$bin" bench lm --lm "$f" --device "$device" --steps $steps $full "${bw[@]}" "${lmcfg[@]}" || true
  done
  # Batched conversations: the whole batch's step at B = 4 and 8 (B = 1 is above), short
  # window; step(B)/step(1) is what one GPU gains per conversation served at once.
  for b in 4 8; do
    run bench-lm-batch 90 "$bin" bench lm --lm "$f" --device "$device" --steps $steps --batch $b "${lmcfg[@]}" || true
  done
  rm -f "$f"
done
# Achieved read rate per bench line, beside the GPU's measured bandwidth.
python3 - "$jsonl" "$gpu_bw" >>"$jsonl" <<'EOF' || true
import json, sys
path, bw = sys.argv[1], sys.argv[2].split()
lines = [json.loads(l) for l in open(path)]
for d in lines:
    if d.get("part") != "bench-lm" or "step_ms_median" not in d:
        continue
    read = d["weights_bytes"] + (d["kv_cache_bytes"] if d.get("full_context") else 0)
    gbps = read / (d["step_ms_median"] / 1e3) / 1e9
    s = {"part": "lm-rate", "lm": d["lm"].rsplit("/", 1)[-1], "full_context": d["full_context"],
         "dtype": d["dtype"], "bytes_read_per_step": read, "step_ms": d["step_ms_median"],
         "achieved_gbps": float(f"{gbps:.3g}")}
    ref = float(bw[1]) if len(bw) == 2 else d.get("read_gbps")
    if ref:
        s["device_read_gbps"] = ref
        s["fraction_of_read_bandwidth"] = round(gbps / ref, 3)
    print(json.dumps(s))
EOF

# 4. Mimi, full size (random weights), streaming, per dtype.
mimi=$work/mimi.safetensors
mcfg=(); [ $quick = 1 ] && mcfg=(--mimi-config models/tests/fixtures/mimi/mimi_config.json)
if run mimi-write 30 "$bin" codec random-weights "${mcfg[@]}" "$mimi"; then
  for dt in f32 bf16 f16; do
    [ "$device" = cpu ] && [ $dt != f32 ] && [ $quick = 1 ] && continue
    run bench-mimi 60 "$bin" bench mimi --mimi "$mimi" "${mcfg[@]}" --device "$device" --dtype $dt --frames 50 || true
  done
  # Batched streams (one conversation each) at B = 1, 4, 8, in f32 as the appliance loads
  # Mimi (on a GPU candle's path, stacked along a batch dimension).
  if [ "$device" != cpu ] || [ $quick = 0 ]; then
    for b in 1 4 8; do
      run bench-mimi-batch 60 "$bin" bench mimi --mimi "$mimi" "${mcfg[@]}" --device "$device" \
        --dtype f32 --frames 20 --batch $b || true
    done
  fi
fi

# 5. The demo pipeline (random small model) in real time: step time and latency.
cat >"$work/demo.toml" <<EOF
[model]
source = "demo"
device = "$device"
EOF
secs=8; [ $quick = 1 ] && secs=3
if run demo 60 "$bin" demo --config "$work/demo.toml" --cache-dir "$work/cache" --seconds $secs \
    --output "$work/demo.wav" --transcript "$work/demo.jsonl"; then :; fi
python3 - "$out" >>"$jsonl" <<'EOF' || true
import glob, json, re, sys
logs = sorted(glob.glob(sys.argv[1] + "/logs/demo.*.log.out"))
if logs:
    text = open(logs[-1], errors="replace").read()
    d = {"part": "demo-figures"}
    for key, pat in [("step", r"model step: mean ([\d.]+) ms, p50 ([\d.]+) ms, p95 ([\d.]+) ms, max ([\d.]+) ms"),
                     ("latency", r"end-to-end latency.*?mean (\d+) ms, p50 (\d+) ms, p95 (\d+) ms, max (\d+) ms")]:
        m = re.search(pat, text)
        if m:
            for name, v in zip(("mean_ms", "p50_ms", "p95_ms", "max_ms"), m.groups()):
                d[f"{key}_{name}"] = float(v)
    m = re.search(r"frames skipped because inference fell behind: (\d+)", text)
    if m:
        d["dropped_frames"] = int(m.group(1))
    print(json.dumps(d))
EOF
emit done "elapsed_s=$(( $(date +%s) - start ))" "budget_s=$budget" "device=$device"
