"""Codes and audio against the committed Mimi references; streaming against batch."""
import numpy as np

import moshid_mimi

FRAME = 1920


def masked(gap, level, near_tie=1e-4):
    """A code is masked when it, or a level above it in its quantizer group, was a near-tie
    in the reference (a flip there legitimately changes every later residual)."""
    first = 0 if level == 0 else 1
    return bool((gap[first:level + 1] < near_tie).any())


def snr_db(ref, ours):
    ref = ref.astype(np.float64)
    noise = ((ref - ours.astype(np.float64)) ** 2).sum()
    return 10 * np.log10((ref ** 2).sum() / max(noise, 1e-300))


def stream_encode(tok, pcm, chunk=FRAME):
    out = []
    for i in range(0, len(pcm), chunk):
        c = tok.encode_step(pcm[None, None, i:i + chunk])
        if c is not None:
            out.append(c)
    return np.concatenate(out, axis=2)


def test_streaming_codes_match_reference(reference, tokenizer_factory):
    tok = tokenizer_factory(32)
    codes = stream_encode(tok, reference["pcm"])
    assert codes.dtype == np.uint32 and codes.shape == (1, 32, 64)
    ours, ref, gap = codes[0].T, reference["codes"], reference["gap"]
    keep = np.array([[not masked(g, lv) for lv in range(32)] for g in gap])
    agree = (ours == ref)[keep].mean()
    print(f"code agreement {agree:.4f} over {keep.sum()} unmasked codes")
    assert agree >= 0.995
    # Level 0 (semantic) must agree wherever it was not a near-tie.
    assert (ours[:, 0] == ref[:, 0])[keep[:, 0]].all()


def test_decode_matches_reference(reference, tokenizer_factory):
    for k in (32, 8):
        tok = tokenizer_factory(k)
        codes = reference["codes"][:, :k].T[None].astype(np.uint32)  # [1, K, T]
        streamed = np.concatenate(
            [tok.decode_step(codes[:, :, f:f + 1])[0, 0] for f in range(codes.shape[2])])
        snr = snr_db(reference[f"decoded{k}"], streamed)
        print(f"{k} codebooks: streaming decode SNR {snr:.1f} dB")
        assert snr >= 80.0
        batch = tok.decode(codes)
        assert batch.dtype == np.float32 and batch.shape == (1, 1, 64 * FRAME)
        assert snr_db(streamed, batch[0, 0]) >= 100.0


def test_batch_encode_equals_streaming(reference, tokenizer_factory):
    tok = tokenizer_factory(8)
    pcm = reference["pcm"]
    batch = tok.encode(pcm[None, None])
    assert batch.shape == (1, 8, 64)
    # Frame-sized steps, odd-sized steps (partial frames buffered) and multi-frame steps.
    for chunk in (FRAME, 1000, 3 * FRAME + 7):
        tok.reset()
        np.testing.assert_array_equal(stream_encode(tok, pcm, chunk), batch)
    # The first 8 levels do not depend on how many follow.
    np.testing.assert_array_equal(tokenizer_factory(32).encode(pcm[None, None])[:, :8], batch)


def test_partial_last_frame_is_zero_padded(reference, tokenizer_factory):
    tok = tokenizer_factory(8)
    pcm = reference["pcm"]
    cut = pcm[:-1000]
    padded = np.concatenate([cut, np.zeros(1000, np.float32)])
    np.testing.assert_array_equal(tok.encode(cut[None, None]), tok.encode(padded[None, None]))


def test_multi_frame_decode_step_equals_single_frames(reference, tokenizer_factory):
    tok = tokenizer_factory(8)
    codes = tok.encode(reference["pcm"][None, None])
    one = np.concatenate([tok.decode_step(codes[:, :, f:f + 1]) for f in range(64)], axis=2)
    tok.reset()
    many = np.concatenate([tok.decode_step(codes[:, :, f:f + 5]) for f in range(0, 64, 5)], axis=2)
    np.testing.assert_array_equal(one, many)
    assert tok.decode_step(codes[:, :, :0]) is None


def test_batch_rows_are_independent(reference, tokenizer_factory):
    tok = tokenizer_factory(8)
    a = reference["pcm"]
    b = np.ascontiguousarray(a[::-1]) * np.float32(0.5)
    both = tok.encode(np.stack([a, b])[:, None])
    np.testing.assert_array_equal(both[0], tok.encode(a[None, None])[0])
    np.testing.assert_array_equal(both[1], tok.encode(b[None, None])[0])
    pcm = tok.decode(both)
    np.testing.assert_array_equal(pcm[1], tok.decode(both[1:])[0])
    # Streaming with batch 2 gives the same codes as the batch encode.
    s = [tok.encode_step(np.stack([a, b])[:, None, i:i + FRAME]) for i in range(0, len(a), FRAME)]
    np.testing.assert_array_equal(np.concatenate(s, axis=2), both)


def test_non_contiguous_input_is_accepted(reference, tokenizer_factory):
    tok = tokenizer_factory(8)
    pcm = reference["pcm"]
    strided = np.stack([pcm, pcm], axis=1)[:, 0]  # a view with stride 2
    assert not strided.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(tok.encode(strided[None, None]), tok.encode(pcm[None, None]))


def test_stream_tokenizer_gives_tokenizer_codes(reference, tokenizer_factory):
    import time

    pcm = reference["pcm"]
    tok = tokenizer_factory(8)
    want = tok.encode(pcm[None, None])[0]
    want_pcm = tok.decode(want[None])[0, 0]
    st = tokenizer_factory(8, cls=moshid_mimi.StreamTokenizer)
    for i in range(0, len(pcm), 1500):  # chunks that are not whole frames
        st.encode(pcm[i:i + 1500])
    for f in range(want.shape[1]):
        st.decode(want[:, f:f + 1])
    codes, audio = [], []
    deadline = time.monotonic() + 120
    while (sum(c.shape[1] for c in codes) < 64 or sum(len(a) for a in audio) < 64 * FRAME):
        assert time.monotonic() < deadline, "StreamTokenizer gave no result in 120 s"
        c, a = st.get_encoded(), st.get_decoded()
        codes += [c] if c is not None else []
        audio += [a] if a is not None else []
        if c is None and a is None:
            time.sleep(0.002)
    got = np.concatenate(codes, axis=1)
    assert got.dtype == np.uint32 and got.shape == (8, 64)
    np.testing.assert_array_equal(got, want)
    assert snr_db(want_pcm, np.concatenate(audio)) >= 100.0
    assert st.get_encoded() is None and st.get_decoded() is None


def test_gil_is_released_during_compute(reference, tokenizer_factory):
    """While one thread encodes, another runs Python code: the middle of the encode call
    sees the main thread's loop iterate (with the GIL held it could not)."""
    import threading
    import time

    tok = tokenizer_factory(8)
    pcm = np.tile(reference["pcm"], 4)[None, None]
    span = {}

    def work():
        span["t0"] = time.perf_counter()
        tok.encode(pcm)
        span["t1"] = time.perf_counter()

    th = threading.Thread(target=work)
    ticks = []
    th.start()
    while th.is_alive():
        ticks.append(time.perf_counter())
    th.join()
    t0, t1 = span["t0"], span["t1"]
    mid = [t for t in ticks if t0 + 0.4 * (t1 - t0) < t < t0 + 0.6 * (t1 - t0)]
    assert t1 - t0 > 0.02, "encode too short to tell"
    assert mid, "no Python code ran during encode: the GIL was held"
