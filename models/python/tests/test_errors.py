"""Every bad input is a Python exception with a message that says what is wrong."""
import numpy as np
import pytest

import moshid_mimi
from conftest import CONFIG, WEIGHTS

FRAME = 1920


@pytest.fixture
def tok(tokenizer_factory):
    return tokenizer_factory(8)


PCM_CASES = [
    ([[[0.0] * FRAME]], TypeError, "numpy.ndarray"),
    (np.zeros((1, 1, FRAME), np.float64), TypeError, "float32"),
    (np.zeros((1, 1, FRAME), np.int16), TypeError, "float32"),
    (np.zeros((1, FRAME), np.float32), ValueError, "3 dimension"),
    (np.zeros((1, 2, FRAME), np.float32), ValueError, "mono"),
    (np.zeros((0, 1, FRAME), np.float32), ValueError, "empty batch"),
    (np.full((1, 1, FRAME), np.nan, np.float32), ValueError, "non-finite"),
    (np.full((1, 1, FRAME), np.inf, np.float32), ValueError, "non-finite"),
]


@pytest.mark.parametrize("pcm,exc,msg", PCM_CASES)
def test_bad_pcm(tok, pcm, exc, msg):
    with pytest.raises(exc, match=msg):
        tok.encode(pcm)
    with pytest.raises(exc, match=msg):
        tok.encode_step(pcm)


def codes(shape, value=0, dtype=np.uint32):
    return np.full(shape, value, dtype)


CODE_CASES = [
    ([[[0] * 3] * 8], TypeError, "numpy.ndarray"),
    (codes((1, 8, 3), 0, np.float32), TypeError, "integer"),
    (codes((1, 8, 3), 0, np.bool_), TypeError, "integer"),
    (codes((8, 3)), ValueError, "3 dimension"),
    (codes((1, 7, 3)), ValueError, "7 codebooks"),
    (codes((1, 32, 3)), ValueError, "32 codebooks"),
    (codes((0, 8, 3)), ValueError, "empty batch"),
    (codes((1, 8, 3), 64), ValueError, "out of range"),
    (codes((1, 8, 3), -1, np.int64), ValueError, "out of range"),
    (codes((1, 8, 3), 2**40, np.int64), ValueError, "out of range"),
    (codes((1, 8, 3), 2**63, np.uint64), ValueError, "out of range"),
]


@pytest.mark.parametrize("c,exc,msg", CODE_CASES)
def test_bad_codes(tok, c, exc, msg):
    with pytest.raises(exc, match=msg):
        tok.decode(c)
    with pytest.raises(exc, match=msg):
        tok.decode_step(c)


def test_other_integer_dtypes_are_accepted(tok):
    c = np.arange(24).reshape(1, 8, 3) % 64
    want = tok.decode(c.astype(np.uint32))
    for dt in (np.int64, np.int32, np.uint16, np.uint8):
        np.testing.assert_array_equal(tok.decode(c.astype(dt)), want)


def test_out_of_range_message_names_the_position(tok):
    c = codes((1, 8, 3))
    c[0, 5, 2] = 99
    with pytest.raises(ValueError, match=r"\[0, 5, 2\] = 99"):
        tok.decode(c)


CTOR_CASES = [
    (dict(num_codebooks=0), ValueError, "num_codebooks must be between 1 and 32"),
    (dict(num_codebooks=33), ValueError, "num_codebooks must be between 1 and 32"),
    (dict(num_codebooks=-1), ValueError, "num_codebooks"),
    (dict(dtype="bf16"), ValueError, "float32"),
    (dict(dtype="f64"), ValueError, "unsupported dtype"),
    (dict(max_seq_len=0), ValueError, "max_seq_len"),
    (dict(device="tpu"), ValueError, "unsupported device"),
    (dict(device="cuda:x"), ValueError, "unsupported device"),
    (dict(config=42), TypeError, "config must be"),
    (dict(config={"sample_rate": 24000}), ValueError, "not a Mimi config"),
]


@pytest.mark.parametrize("cls", [moshid_mimi.Tokenizer, moshid_mimi.StreamTokenizer])
@pytest.mark.parametrize("kw,exc,msg", CTOR_CASES)
def test_bad_constructor_arguments(cls, kw, exc, msg):
    args = dict(num_codebooks=8, config=str(CONFIG))
    args.update(kw)
    with pytest.raises(exc, match=msg):
        cls(str(WEIGHTS), **args)


def test_cuda_without_cuda_build_is_an_error():
    try:
        moshid_mimi.Tokenizer(str(WEIGHTS), config=str(CONFIG), device="cuda")
    except RuntimeError as e:
        assert "CUDA" in str(e)
    # A CUDA build on a machine with a GPU loads: nothing to check then.


def test_missing_or_mismatched_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        moshid_mimi.Tokenizer(str(tmp_path / "absent.safetensors"), config=str(CONFIG))
    # The small weights with the full-size (default) config: a shape mismatch, named.
    with pytest.raises(ValueError, match="shape"):
        moshid_mimi.Tokenizer(str(WEIGHTS))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        moshid_mimi.Tokenizer(str(junk), config=str(CONFIG))
    with pytest.raises(FileNotFoundError):
        moshid_mimi.Tokenizer(str(WEIGHTS), config=str(tmp_path / "absent.json"))


def test_batch_size_cannot_change_mid_stream(tok):
    assert tok.encode_step(np.zeros((2, 1, FRAME), np.float32)).shape == (2, 8, 1)
    with pytest.raises(ValueError, match="batch size 2"):
        tok.encode_step(np.zeros((1, 1, FRAME), np.float32))
    tok.reset()
    assert tok.encode_step(np.zeros((1, 1, FRAME), np.float32)).shape == (1, 8, 1)


def test_stream_tokenizer_bad_input(tokenizer_factory):
    st = tokenizer_factory(8, cls=moshid_mimi.StreamTokenizer)
    with pytest.raises(TypeError, match="float32"):
        st.encode(np.zeros(FRAME, np.float64))
    with pytest.raises(ValueError, match="1 dimension"):
        st.encode(np.zeros((1, FRAME), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        st.encode(np.full(FRAME, np.nan, np.float32))
    with pytest.raises(ValueError, match="2 dimension"):
        st.decode(codes((1, 8, 1)))
    with pytest.raises(ValueError, match="4 codebooks"):
        st.decode(codes((4, 1)))
    with pytest.raises(ValueError, match="out of range"):
        st.decode(codes((8, 1), 64))


def test_write_wav_bad_input(tmp_path):
    good = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="sample_rate"):
        moshid_mimi.write_wav(str(tmp_path / "a.wav"), good, 0)
    with pytest.raises(ValueError, match="sample_rate"):
        moshid_mimi.write_wav(str(tmp_path / "a.wav"), good, -5)
    with pytest.raises(ValueError, match="1 dimension"):
        moshid_mimi.write_wav(str(tmp_path / "a.wav"), good[None], 24000)
    with pytest.raises(TypeError, match="float32"):
        moshid_mimi.write_wav(str(tmp_path / "a.wav"), good.astype(np.float64), 24000)
    with pytest.raises(OSError, match="no-such-dir"):
        moshid_mimi.write_wav(str(tmp_path / "no-such-dir" / "a.wav"), good, 24000)


def test_write_random_checkpoint_bad_input(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        moshid_mimi.write_random_checkpoint(str(tmp_path / "w.safetensors"), seed=-1)
    with pytest.raises(OSError):
        moshid_mimi.write_random_checkpoint(str(tmp_path / "no-such-dir" / "w.safetensors"),
                                            config=str(CONFIG))
