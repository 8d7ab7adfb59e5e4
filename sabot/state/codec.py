"""The state format: one versioned, self-describing, data-only encoding for checkpoint files
and changelog record values.

Restoring state must never run code, whoever wrote the bytes (a file dropped into a
checkpoint directory, a record produced into a changelog topic by anyone who can reach the
broker).  So state is encoded as *data*: decoding only ever builds the types listed below,
never imports a module, constructs an arbitrary class, calls or evaluates anything.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"SABOTST1"
    8       2     format version (u16), currently 1
    10      2     flags (u16): bit 0 = an HMAC-SHA256 tag follows the body
    12      4     header length H (u32)
    16      8     body length B (u64)
    24      H     header: a UTF-8 JSON object; ``kind`` ("checkpoint" or "changelog"),
                  ``created`` (unix seconds) and the kind's fields (offsets, task, operators)
    24+H    B     body: the state, MessagePack (below)
    24+H+B  32    HMAC-SHA256(key, bytes 0 .. 24+H+B), present iff flag bit 0

The total length must be exactly that; anything else is refused.  With a state key the tag is
verified (constant time) before the header or the body is parsed.

Body types, so that a restored pipeline continues bit for bit: ``None``, ``bool``, ``int``
(any size), ``float`` (all 64 bits kept, NaN payloads and -0.0 included), ``str``, ``bytes``,
``list``, ``dict`` (keys of any of these hashable types), and as MessagePack extension types
``tuple``, integers beyond 64 bits, numpy scalars and numpy arrays of the numeric dtypes in
:data:`NUMPY_DTYPES` (shape + raw little-endian bytes; restored C-contiguous and writable).
Nesting is limited to :data:`MAX_DEPTH` levels.  Anything else cannot be written: the encoder
raises ``TypeError`` naming where in the state the value sits.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import struct
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import msgspec
import numpy as np
from msgspec.msgpack import Ext

#: The first 8 bytes of every state file and changelog record.
MAGIC = b"SABOTST1"
#: Version of the layout above (bumped on incompatible changes).
STATE_FORMAT_VERSION = 1
#: Flag bit: an HMAC-SHA256 tag follows the body.
FLAG_HMAC = 0x1
_KNOWN_FLAGS = FLAG_HMAC
_PREFIX = struct.Struct("<8sHHIQ")
PREFIX_SIZE = _PREFIX.size  # 24
TAG_SIZE = 32
#: Largest JSON header accepted (offsets of many partitions fit easily).
MAX_HEADER_BYTES = 16 << 20
#: Deepest nesting of containers accepted in a body (written or read).
MAX_DEPTH = 64
#: Environment variable holding the state key when none is given in the API.
STATE_KEY_ENV = "SABOT_STATE_KEY"

#: numpy dtypes a state may contain (one byte code each, stored little-endian).
NUMPY_DTYPES: Dict[int, np.dtype] = {
    1: np.dtype("<b1"), 2: np.dtype("<i1"), 3: np.dtype("<i2"), 4: np.dtype("<i4"),
    5: np.dtype("<i8"), 6: np.dtype("<u1"), 7: np.dtype("<u2"), 8: np.dtype("<u4"),
    9: np.dtype("<u8"), 10: np.dtype("<f2"), 11: np.dtype("<f4"), 12: np.dtype("<f8"),
    13: np.dtype("<c8"), 14: np.dtype("<c16"),
}
_DTYPE_CODE = {(dt.kind, dt.itemsize): code for code, dt in NUMPY_DTYPES.items()}

_EXT_TUPLE = 1
_EXT_BIGINT = 2
_EXT_NDARRAY = 3
_EXT_NPSCALAR = 4
_EXT_DICT = 5  # a dict whose keys are not all plain MessagePack keys (tuples, numpy scalars)
_MAX_NDIM = 32

_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1
#: Types MessagePack holds exactly as they are (ints only within 64 bits: checked by msgspec).
_PLAIN_TYPES = frozenset({str, bytes, bool, float, int, type(None)})
_CONTAINER_TYPES = frozenset({list, dict, tuple})


class CheckpointError(RuntimeError):
    """State could not be read or written, or does not match the pipeline (the message names
    the file, or the changelog ``topic/partition/offset``)."""


class StateFormatError(ValueError):
    """Bytes that are not a valid state body (no location; callers add it)."""


def state_key_from(key: Optional[Any]) -> Optional[bytes]:
    """The HMAC key to use: ``key`` (bytes, or str as UTF-8) when given, else the environment
    variable ``SABOT_STATE_KEY`` (UTF-8) when set and non-empty, else None (no tag)."""
    if key is None:
        env = os.environ.get(STATE_KEY_ENV)
        return env.encode() if env else None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError(f"state_key must be non-empty bytes, got {type(key).__name__}")
    return bytes(key)


# -- body: encode ----------------------------------------------------------------------------
def _dtype_code(dt: np.dtype) -> int:
    code = _DTYPE_CODE.get((dt.kind, dt.itemsize))
    if code is None or dt.kind not in "biufc" or dt.fields is not None:
        raise TypeError(f"numpy dtype {dt} is not supported in state "
                        f"(supported: {', '.join(str(d) for d in NUMPY_DTYPES.values())})")
    return code


class _Encoder:
    """Turns a state tree into one MessagePack can encode exactly (tuples etc. as Ext)."""

    def __init__(self) -> None:
        self._msgpack = msgspec.msgpack.Encoder()
        #: pass lists/dicts of plain values through untouched (msgspec encodes them exactly;
        #: an int beyond 64 bits among them makes it raise OverflowError: then walk them all)
        self._fast = True

    def encode(self, obj: Any) -> bytes:
        try:
            return self._msgpack.encode(self._conv(obj, 0))
        except OverflowError:
            self._fast = False
            return self._msgpack.encode(self._conv(obj, 0))

    def _conv(self, x: Any, depth: int) -> Any:
        t = type(x)
        if t is str or t is bytes or t is bool or x is None or t is float:
            return x
        if t is int:
            if _INT64_MIN <= x <= _UINT64_MAX:
                return x
            n = (x.bit_length() + 8) // 8
            return Ext(_EXT_BIGINT, x.to_bytes(n, "little", signed=True))
        if depth >= MAX_DEPTH:
            raise TypeError(f"state nested deeper than {MAX_DEPTH} levels")
        if t is list:
            if self._fast and _PLAIN_TYPES.issuperset(map(type, x)):
                return x
            return [self._conv(v, depth + 1) for v in x]
        if t is dict:
            if (self._fast and _PLAIN_TYPES.issuperset(map(type, x))
                    and _PLAIN_TYPES.issuperset(map(type, x.values()))):
                return x
            keys = [self._conv(k, depth + 1) for k in x]
            values = [self._conv(v, depth + 1) for v in x.values()]
            if any(type(k) is Ext for k in keys):  # tuple keys: a list of key, value pairs
                flat = [item for pair in zip(keys, values) for item in pair]
                return Ext(_EXT_DICT, self._msgpack.encode(flat))
            return dict(zip(keys, values))
        if t is tuple:
            return Ext(_EXT_TUPLE, self._msgpack.encode([self._conv(v, depth + 1) for v in x]))
        if t is np.ndarray:
            code = _dtype_code(x.dtype)
            if x.ndim > _MAX_NDIM:
                raise TypeError(f"numpy array with {x.ndim} dimensions")
            le = np.ascontiguousarray(x, dtype=NUMPY_DTYPES[code])
            return Ext(_EXT_NDARRAY, struct.pack(f"<BB{x.ndim}Q", code, x.ndim, *x.shape)
                       + le.tobytes())
        if isinstance(x, np.generic) and not isinstance(x, np.object_):
            code = _dtype_code(x.dtype)
            return Ext(_EXT_NPSCALAR, bytes([code]) + np.asarray(x, NUMPY_DTYPES[code]).tobytes())
        raise TypeError(f"values of type {t.__module__}.{t.__qualname__} cannot be stored in "
                        "state (data only: None, bool, int, float, str, bytes, list, tuple, "
                        "dict, numpy numbers and arrays)")


def _where(obj: Any, depth: int = 0) -> Optional[str]:
    """Path (``['a'][0]``) of the first value the encoder refuses, for its error message."""
    try:
        _Encoder()._conv(obj, depth)
        return None
    except TypeError:
        pass
    if type(obj) is dict:
        items: Any = [(f"[{k!r}] (key)", k) for k in obj] + [(f"[{k!r}]", v)
                                                              for k, v in obj.items()]
    elif type(obj) in (list, tuple):
        items = [(f"[{i}]", v) for i, v in enumerate(obj)]
    else:
        return ""
    for label, value in items:
        sub = _where(value, depth + 1)
        if sub is not None:
            return label + sub
    return ""


def encode_state(obj: Any) -> bytes:
    """The MessagePack body of ``obj`` (TypeError naming the offending value's place)."""
    try:
        return _Encoder().encode(obj)
    except TypeError as exc:
        raise TypeError(f"state{_where(obj) or ''}: {exc}") from None


# -- body: decode ----------------------------------------------------------------------------
_local = threading.local()


def _ext_hook(code: int, view: memoryview) -> Any:
    data = bytes(view)  # len() of the view msgspec passes is not the payload's: copy it
    depth = getattr(_local, "depth", 0)
    if depth >= MAX_DEPTH:
        raise StateFormatError(f"nested deeper than {MAX_DEPTH} levels")
    if code == _EXT_TUPLE:
        _local.depth = depth + 1
        try:
            items = _decode_nested(data)
        finally:
            _local.depth = depth
        if type(items) is not list:
            raise StateFormatError("tuple extension does not hold an array")
        return tuple(items)
    if code == _EXT_DICT:
        _local.depth = depth + 1
        try:
            flat = _decode_nested(data)
        finally:
            _local.depth = depth
        if type(flat) is not list or len(flat) % 2:
            raise StateFormatError("dict extension does not hold key, value pairs")
        it = iter(flat)
        return dict(zip(it, it))
    if code == _EXT_BIGINT:
        if not 1 <= len(data) <= 4096:
            raise StateFormatError(f"integer extension of {len(data)} bytes")
        return int.from_bytes(data, "little", signed=True)
    if code == _EXT_NPSCALAR:
        if len(data) < 1 or data[0] not in NUMPY_DTYPES:
            raise StateFormatError("numpy scalar extension with an unknown dtype")
        dt = NUMPY_DTYPES[data[0]]
        if len(data) != 1 + dt.itemsize:
            raise StateFormatError(f"numpy {dt} scalar of {len(data) - 1} bytes")
        return np.frombuffer(data, dt, 1, 1).astype(dt.newbyteorder("="))[0]
    if code == _EXT_NDARRAY:
        if len(data) < 2 or data[0] not in NUMPY_DTYPES or data[1] > _MAX_NDIM:
            raise StateFormatError("numpy array extension with an unknown dtype or rank")
        dt, ndim = NUMPY_DTYPES[data[0]], data[1]
        head = 2 + 8 * ndim
        if len(data) < head:
            raise StateFormatError("numpy array extension truncated")
        shape = struct.unpack_from(f"<{ndim}Q", data, 2)
        count = math.prod(shape)
        if count * dt.itemsize != len(data) - head:
            raise StateFormatError(f"numpy array of shape {shape} and dtype {dt} needs "
                                   f"{count * dt.itemsize} bytes, has {len(data) - head}")
        arr = np.frombuffer(data, dt, count, head).reshape(shape)
        return arr.astype(dt.newbyteorder("="), copy=True)
    raise StateFormatError(f"unknown extension type {code}")


_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def _decode_nested(data: bytes) -> Any:
    """Decode an extension's payload (a Decoder is not re-entrant: its own hook cannot use it)."""
    return msgspec.msgpack.decode(data, ext_hook=_ext_hook)


def _check_depth(obj: Any) -> None:
    """StateFormatError when containers nest deeper than MAX_DEPTH (plain arrays and maps are
    bounded by the decoder's recursion guard; this states the limit explicitly)."""
    stack: List[Tuple[Any, int]] = [(obj, 0)]
    while stack:
        x, d = stack.pop()
        if d > MAX_DEPTH:
            raise StateFormatError(f"nested deeper than {MAX_DEPTH} levels")
        t = type(x)
        if t is dict:
            if not _CONTAINER_TYPES.isdisjoint(map(type, x.values())):
                stack.extend((v, d + 1) for v in x.values() if type(v) in _CONTAINER_TYPES)
            if tuple in set(map(type, x)):
                stack.extend((k, d + 1) for k in x if type(k) is tuple)
        elif (t is list or t is tuple) and not _CONTAINER_TYPES.isdisjoint(map(type, x)):
            stack.extend((v, d + 1) for v in x if type(v) in _CONTAINER_TYPES)


def decode_state(body: Union[bytes, memoryview]) -> Any:
    """The state encoded by :func:`encode_state`; StateFormatError for anything else."""
    _local.depth = 0
    try:
        obj = _DECODER.decode(body)
    except StateFormatError:
        raise
    except (msgspec.DecodeError, RecursionError, TypeError, ValueError, OverflowError) as exc:
        raise StateFormatError(f"{type(exc).__name__}: {exc}") from None
    _check_depth(obj)
    return obj


# -- records ---------------------------------------------------------------------------------
def encode_record(kind: str, header: Mapping[str, Any], state: Any,
                  key: Optional[bytes] = None) -> bytes:
    """One state file / changelog value: prefix, JSON ``header`` (with ``kind``), the
    encoded ``state``, and an HMAC-SHA256 tag when ``key`` is given."""
    head = json.dumps({**header, "kind": kind}, separators=(",", ":"),
                      allow_nan=False).encode()
    body = encode_state(state)
    flags = FLAG_HMAC if key else 0
    out = _PREFIX.pack(MAGIC, STATE_FORMAT_VERSION, flags, len(head), len(body)) + head + body
    if key:
        out += hmac.new(key, out, hashlib.sha256).digest()
    return out


def decode_record(data: bytes, *, kind: str, where: str,
                  key: Optional[bytes] = None) -> Tuple[Dict[str, Any], Any]:
    """``(header, state)`` of one record written by :func:`encode_record`.

    Raises :class:`CheckpointError` starting with ``where`` (the file, or
    ``topic/partition/offset``) for anything else: another format (a pickle, garbage), a
    truncated or over-long record, another format version, unknown flags, another ``kind``, a
    missing or wrong HMAC tag when ``key`` is given (checked before anything is parsed), a
    tag when no key is given, or a body that does not decode to the whitelisted types."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"{where}: not state bytes ({type(data).__name__})")
    data = bytes(data)
    if len(data) < PREFIX_SIZE or data[:8] != MAGIC:
        what = ("a Python pickle" if data[:1] == b"\x80" else
                f"{len(data)} bytes starting {data[:8]!r}")
        raise CheckpointError(f"{where}: not a sabot state record (no {MAGIC.decode()} "
                              f"header; found {what}); refusing to load it")
    _, version, flags, hlen, blen = _PREFIX.unpack_from(data)
    if version != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{where}: state format version {version}; this version of "
                              f"sabot reads version {STATE_FORMAT_VERSION}")
    if flags & ~_KNOWN_FLAGS:
        raise CheckpointError(f"{where}: unknown state flags 0x{flags:04x}")
    tagged = bool(flags & FLAG_HMAC)
    expected = PREFIX_SIZE + hlen + blen + (TAG_SIZE if tagged else 0)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data"
        raise CheckpointError(f"{where}: record is {len(data)} bytes, its header says "
                              f"{expected} ({what})")
    signed_len = PREFIX_SIZE + hlen + blen
    if key:
        if not tagged:
            raise CheckpointError(f"{where}: record has no HMAC tag but a state key is set; "
                                  "refusing unauthenticated state")
        tag = hmac.new(key, memoryview(data)[:signed_len], hashlib.sha256).digest()
        if not hmac.compare_digest(tag, data[signed_len:]):
            raise CheckpointError(f"{where}: HMAC tag does not match the state key (wrong key "
                                  "or altered record); refusing it")
    elif tagged:
        raise CheckpointError(f"{where}: record is authenticated (HMAC tag) but no state key "
                              f"is set; pass state_key= or set {STATE_KEY_ENV}")
    if hlen > MAX_HEADER_BYTES:
        raise CheckpointError(f"{where}: header of {hlen} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(data[PREFIX_SIZE:PREFIX_SIZE + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")
    if header.get("kind") != kind:
        raise CheckpointError(f"{where}: a {header.get('kind')!r} record where a {kind!r} "
                              "record was expected")
    created = header.get("created")
    if type(created) not in (int, float):
        raise CheckpointError(f"{where}: header field 'created' is {created!r}, not a number")
    try:
        state = decode_state(memoryview(data)[PREFIX_SIZE + hlen:signed_len])
    except StateFormatError as exc:
        raise CheckpointError(f"{where}: unreadable state body: {exc}") from None
    return header, state
