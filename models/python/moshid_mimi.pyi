"""moshid's Mimi codec (24 kHz mono audio <-> 12.5 Hz frames of codes), rustymimi's API.

Replace ``import rustymimi`` with ``import moshid_mimi as rustymimi``.
"""
from os import PathLike
from typing import Any, Mapping, Optional, Union

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: int
FRAME_SAMPLES: int
__version__: str

_Path = Union[str, PathLike]
_Config = Union[None, _Path, Mapping[str, Any]]

class Tokenizer:
    """Mimi encoder and decoder.

    ``encode``/``decode`` take whole signals with a fresh state; ``encode_step``/``decode_step``
    continue a stream until ``reset()``. ``config``: None (the released Mimi), a dict or a JSON
    file in the reference's ``mimi_config`` layout. ``device``: "cpu", "cuda" or "cuda:N".
    Only dtype="f32" is supported; ``max_seq_len`` is checked and otherwise unused (Mimi's
    transformers keep a fixed window). Mimi computes with the GIL released.
    """

    num_codebooks: int
    frame_size: int
    cardinality: int
    device: str
    def __init__(self, path: _Path, *, num_codebooks: int = 8, dtype: str = "f32",
                 max_seq_len: Optional[int] = None, device: str = "cpu",
                 config: _Config = None) -> None: ...
    def encode(self, pcm_data: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]:
        """float32 [B, 1, T] -> uint32 codes [B, num_codebooks, ceil(T / 1920)]."""
    def decode(self, codes: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        """integer codes [B, num_codebooks, F] -> float32 audio [B, 1, F * 1920]."""
    def encode_step(self, pcm_data: npt.NDArray[np.float32]) -> Optional[npt.NDArray[np.uint32]]:
        """float32 [B, 1, T] (any T; partial frames wait) -> codes [B, K, frames done] or None."""
    def decode_step(self, codes: npt.NDArray[np.integer]) -> Optional[npt.NDArray[np.float32]]:
        """codes [B, K, F] -> audio [B, 1, F * 1920], or None when F == 0."""
    def reset(self) -> None:
        """Forgets the streaming state and buffered audio."""

class StreamTokenizer:
    """One stream, encoded and decoded on background threads."""

    num_codebooks: int
    def __init__(self, path: _Path, *, num_codebooks: int = 8, dtype: str = "f32",
                 max_seq_len: Optional[int] = None, device: str = "cpu",
                 config: _Config = None) -> None: ...
    def encode(self, pcm_data: npt.NDArray[np.float32]) -> None:
        """Queues float32 [T] audio (any length)."""
    def decode(self, codes: npt.NDArray[np.integer]) -> None:
        """Queues codes [num_codebooks, F]."""
    def get_encoded(self) -> Optional[npt.NDArray[np.uint32]]:
        """Codes [num_codebooks, F] of the next encode call that completed a frame, or None."""
    def get_decoded(self) -> Optional[npt.NDArray[np.float32]]:
        """Audio [F * 1920] of the next decode call, or None."""

def write_wav(filename: _Path, data: npt.NDArray[np.float32], sample_rate: int) -> None:
    """Writes mono float32 [T] audio as a 16-bit PCM WAV file (clamped to [-1, 1])."""

def write_random_checkpoint(path: _Path, *, seed: int = 0, config: _Config = None) -> None:
    """Writes a deterministic random-weight Mimi checkpoint (default: full size)."""
