"""The update codec: model deltas and full models as safetensors bytes, never pickle.

An encoded update is a safetensors file whose metadata says what it is::

    {"format": "barnraise-update/1", "codec": "int8",
     "tensors": "{\"fc1.weight\": {\"shape\": [64, 32]}, ...}"}

and whose tensors are the *parts* of each model tensor, named ``<name>::<part>``:

=============  ===========================================================  =================
codec          parts of tensor ``name`` (dtype, shape)                       error per entry
=============  ===========================================================  =================
f32            ``values`` F32 (shape)                                        exact
f16            ``values`` F16 (shape)                                        f16 rounding
int8           ``q`` I8 (shape), ``scale`` F32 ()                            <= scale / 2
int8-block     ``q`` I8 (shape), ``scale`` F32 (ceil(numel / 256),)          <= its block's scale / 2
topk:<frac>    ``indices`` I32 (k,) (I64 past 2**31 entries), ``values`` F32  kept exact, rest 0
=============  ===========================================================  =================

``scale = absmax / 127``; ``k = clamp(round(frac * numel), 1, numel)``; top-k indices are
flat, strictly increasing. Decoding checks every declared name, dtype and shape against
the model's spec *before* it reads tensor data, so a payload cannot make the decoder
allocate more than the model's size, and reads the data with one copy.

Modules: ``formats`` (format tags, codec names and part layouts), ``container`` (safetensors
bytes read and written safely), ``update`` (``encode_update``/``decode_update``),
``feedback`` (``ErrorFeedback``), ``model`` (``encode_model``/``decode_model``).
"""

from __future__ import annotations

from federated.codec.container import MAX_HEADER_BYTES
from federated.codec.feedback import ErrorFeedback
from federated.codec.formats import (
    CODECS,
    INT8_BLOCK_SIZE,
    MODEL_FORMAT,
    PART_SEPARATOR,
    UPDATE_FORMAT,
    ZSTD_SUFFIX,
    EncodedPayload,
    canonical_codec,
    sha256_hex,
    topk_count,
)
from federated.codec.model import decode_model, encode_model
from federated.codec.update import decode_update, encode_update

__all__ = [
    "CODECS",
    "INT8_BLOCK_SIZE",
    "MAX_HEADER_BYTES",
    "MODEL_FORMAT",
    "PART_SEPARATOR",
    "UPDATE_FORMAT",
    "ZSTD_SUFFIX",
    "EncodedPayload",
    "ErrorFeedback",
    "canonical_codec",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_update",
    "sha256_hex",
    "topk_count",
]
