#!/usr/bin/env python3
"""moshid_mimi against rustymimi (PyPI) on the same full-size random Mimi weights.

Encode and decode, batch (one call over the whole clip) and streaming (one call per 80 ms
frame); runs alternate between the two modules and the figures are medians over repetitions,
since the machine may be shared. Prints one JSON object and a Markdown table.

    pip install rustymimi==0.4.1 ./models/python
    python3 models/python/bench.py [--weights W.safetensors] [--seconds 10] [--reps 5]

Without --weights a deterministic random checkpoint (moshid's writer, seed 1) is written to
a temporary file and removed afterwards. Weights are never committed.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import wave

import numpy as np

FRAME = 1920
CLIP = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mimi" / "speech_24k.wav"


def clip(seconds):
    """The committed speech clip, tiled to `seconds` and cut to whole frames."""
    with wave.open(str(CLIP), "rb") as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    n = int(seconds * 24000) // FRAME * FRAME
    return np.resize(x, n).astype(np.float32)


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def one_run(tok, pcm):
    """Seconds for batch encode/decode of the clip, median ms per frame for streaming."""
    t_enc, codes = timed(lambda: tok.encode(pcm[None, None]))
    codes = np.ascontiguousarray(codes, dtype=np.uint32)
    t_dec, _ = timed(lambda: tok.decode(codes))
    tok.reset()
    enc, dec = [], []
    for i in range(0, len(pcm), FRAME):
        dt, _ = timed(lambda: tok.encode_step(pcm[None, None, i:i + FRAME]))
        enc.append(dt)
    for f in range(codes.shape[2]):
        c = np.ascontiguousarray(codes[:, :, f:f + 1])
        dt, _ = timed(lambda: tok.decode_step(c))
        dec.append(dt)
    tok.reset()
    return {
        "batch_encode_s": t_enc,
        "batch_decode_s": t_dec,
        "stream_encode_ms": 1000 * statistics.median(enc),
        "stream_decode_ms": 1000 * statistics.median(dec),
    }, codes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="full-size Mimi safetensors (default: random, seed 1)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--num-codebooks", type=int, default=8)
    args = ap.parse_args()

    import moshid_mimi
    import rustymimi

    tmp = None
    weights = args.weights
    if weights is None:
        tmp = tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False)
        tmp.close()
        weights = tmp.name
        moshid_mimi.write_random_checkpoint(weights, seed=1)
    try:
        result = bench(moshid_mimi, rustymimi, weights, args)
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    print(json.dumps(result))
    print(table(result))


def bench(moshid_mimi, rustymimi, weights, args):
    pcm = clip(args.seconds)
    toks = {
        "moshid_mimi": moshid_mimi.Tokenizer(weights, num_codebooks=args.num_codebooks),
        "rustymimi": rustymimi.Tokenizer(weights, num_codebooks=args.num_codebooks),
    }
    runs = {name: [] for name in toks}
    codes = {}
    load = [os.getloadavg()[0]]
    for rep in range(args.reps + 1):  # the first repetition warms up and is dropped
        order = list(toks) if rep % 2 == 0 else list(toks)[::-1]
        for name in order:
            r, codes[name] = one_run(toks[name], pcm)
            if rep > 0:
                runs[name].append(r)
        load.append(os.getloadavg()[0])
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    ratio = {k: med["moshid_mimi"][k] / med["rustymimi"][k] for k in med["moshid_mimi"]}
    agree = float((codes["moshid_mimi"] == codes["rustymimi"]).mean())
    return {
        "seconds": len(pcm) / 24000, "frames": len(pcm) // FRAME, "reps": args.reps,
        "num_codebooks": args.num_codebooks, "median": med, "ratio_moshid_over_rustymimi": ratio,
        "code_agreement": agree, "loadavg_1min": [round(x, 2) for x in load],
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
    }


def table(r):
    rows = [
        ("batch encode (whole clip)", "batch_encode_s", 1000, "ms"),
        ("batch decode (whole clip)", "batch_decode_s", 1000, "ms"),
        ("streaming encode, per 80 ms frame", "stream_encode_ms", 1, "ms"),
        ("streaming decode, per 80 ms frame", "stream_decode_ms", 1, "ms"),
    ]
    m = r["median"]
    out = [f"{r['seconds']:.1f} s clip, {r['num_codebooks']} codebooks, median of {r['reps']} "
           f"alternating runs, load average {min(r['loadavg_1min'])}-{max(r['loadavg_1min'])} "
           f"on {r['cpus']} CPUs",
           "", "| | moshid_mimi | rustymimi 0.4.1 | ratio |", "|---|---|---|---|"]
    for label, k, scale, unit in rows:
        out.append(f"| {label} | {m['moshid_mimi'][k] * scale:.1f} {unit} | "
                   f"{m['rustymimi'][k] * scale:.1f} {unit} | {r['ratio_moshid_over_rustymimi'][k]:.2f}x |")
    out.append(f"\ncode agreement between the two: {r['code_agreement']:.4f}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
