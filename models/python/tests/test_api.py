"""The rustymimi-compatible surface: signatures, attributes, write_wav, random checkpoints."""
import json
import wave

import numpy as np

import moshid_mimi
from conftest import CONFIG, WEIGHTS


def test_signatures_match_rustymimi():
    # rustymimi 0.4.1's signatures, then moshid's additions (keyword-only, defaulted).
    common = '(path, *, num_codebooks=8, dtype="f32", max_seq_len=None, device="cpu", config=None)'
    assert moshid_mimi.Tokenizer.__text_signature__ == common
    assert moshid_mimi.StreamTokenizer.__text_signature__ == common
    assert moshid_mimi.write_wav.__text_signature__ == "(filename, data, sample_rate)"
    for name in ("encode", "decode", "encode_step", "decode_step", "reset"):
        assert callable(getattr(moshid_mimi.Tokenizer, name))
    for name in ("encode", "decode", "get_encoded", "get_decoded"):
        assert callable(getattr(moshid_mimi.StreamTokenizer, name))
    assert moshid_mimi.SAMPLE_RATE == 24000 and moshid_mimi.FRAME_SAMPLES == 1920


def test_attributes_and_keyword_names(tokenizer_factory):
    tok = tokenizer_factory(8, max_seq_len=4096)
    assert (tok.num_codebooks, tok.frame_size, tok.cardinality, tok.device) == (8, 1920, 64, "cpu")
    pcm = np.zeros((1, 1, 1920), np.float32)
    codes = tok.encode(pcm_data=pcm)
    assert tok.decode(codes=codes).shape == (1, 1, 1920)
    assert tok.encode_step(pcm_data=pcm[:, :, :100]) is None  # less than a frame: buffered


def test_config_as_dict_equals_config_as_path():
    cfg = json.loads(CONFIG.read_text())
    a = moshid_mimi.Tokenizer(str(WEIGHTS), config=cfg)
    b = moshid_mimi.Tokenizer(WEIGHTS, config=CONFIG)  # PathLike works too
    pcm = np.sin(np.arange(3 * 1920, dtype=np.float32) / 7)[None, None]
    np.testing.assert_array_equal(a.encode(pcm), b.encode(pcm))


def test_write_wav_is_16_bit_pcm(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 0.99999], np.float32)
    path = tmp_path / "x.wav"
    moshid_mimi.write_wav(str(path), x, 24000)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        got = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    np.testing.assert_array_equal(got, (np.clip(x, -1, 1) * 32767).astype(np.int16))


def test_random_checkpoint_loads(tmp_path):
    path = tmp_path / "r.safetensors"
    moshid_mimi.write_random_checkpoint(str(path), seed=3, config=str(CONFIG))
    tok = moshid_mimi.Tokenizer(str(path), config=str(CONFIG))
    codes = tok.encode(np.zeros((1, 1, 1920 * 2), np.float32))
    assert codes.shape == (1, 8, 2) and (codes < 64).all()
