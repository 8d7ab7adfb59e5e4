"""Side-by-side: decode normalised ticker JSON messages into a typed Arrow batch (from_kafka's
hot path), 10k messages per call as from_kafka's micro-batches are, and encode rows back to
JSON (to_kafka's hot path).

Peers: orjson per message + ``pa.Table.from_pylist`` (the obvious way), pyarrow's C++ JSON
reader over newline-joined values, polars ``read_ndjson``.  All produce the same typed columns.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import orjson
import pyarrow as pa
import pyarrow.json as pj

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from stream_data import exchange_rounded, json_values, ticker_table  # noqa: E402

from sabot.api._decode import JsonBatchDecoder, reader_schema  # noqa: E402
from sabot.api._kafka import encode_json  # noqa: E402
from sabot.schema import TICKER_SCHEMA  # noqa: E402

CHUNK = 10_000


def _chunks(values: List[bytes]) -> List[List[bytes]]:
    return [values[i:i + CHUNK] for i in range(0, len(values), CHUNK)]


def decode_fns(table: pa.Table) -> Dict[str, Callable[[], object]]:
    chunks = _chunks(json_values(table))
    native = JsonBatchDecoder(TICKER_SCHEMA)
    raw_schema = reader_schema(TICKER_SCHEMA)
    parse_opts = pj.ParseOptions(explicit_schema=raw_schema, unexpected_field_behavior="ignore")
    read_opts = pj.ReadOptions(use_threads=False, block_size=1 << 24)
    names = TICKER_SCHEMA.names

    def sabot_decode():
        for c in chunks:
            native.decode(c)

    def orjson_from_pylist():
        for c in chunks:
            rows = [orjson.loads(v) for v in c]
            pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows],
                                 schema=raw_schema).cast(TICKER_SCHEMA, safe=False)

    def arrow_json_reader():
        for c in chunks:
            pj.read_json(pa.BufferReader(b"\n".join(c)), read_options=read_opts,
                         parse_options=parse_opts).cast(TICKER_SCHEMA, safe=False)

    fns = {"sabot": sabot_decode, "orjson+from_pylist": orjson_from_pylist,
           "pyarrow.json": arrow_json_reader}
    try:
        import polars as pl

        pl_schema = {f.name: (pl.Int64 if pa.types.is_timestamp(f.type) else
                              pl.Float64 if pa.types.is_floating(f.type) else
                              pl.Int64 if pa.types.is_integer(f.type) else pl.Utf8)
                     for f in TICKER_SCHEMA}

        def polars_ndjson():
            for c in chunks:
                pl.read_ndjson(io.BytesIO(b"\n".join(c)), schema=pl_schema).to_arrow()

        fns["polars.read_ndjson"] = polars_ndjson
    except ImportError:
        pass
    return fns


def cases(scale: float = 1.0) -> List[Tuple[str, int, Dict[str, Callable[[], object]]]]:
    n = max(CHUNK, int(200_000 * scale))
    table = ticker_table("coinbase", n, seed=1)
    batches = table.to_batches(max_chunksize=CHUNK)

    def sabot_encode():
        for b in batches:
            encode_json(b)

    def pylist_orjson():
        for b in batches:
            cols = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in b.columns]
            rows = pa.RecordBatch.from_arrays(cols, names=b.schema.names).to_pylist()
            [orjson.dumps(r) for r in rows]

    return [("stream: decode ticker JSON (full-precision floats)", n, decode_fns(table)),
            ("stream: decode ticker JSON (exchange decimals)", n,
             decode_fns(exchange_rounded(table))),
            ("stream: encode RecordBatch -> ticker JSON", n,
             {"sabot": sabot_encode, "to_pylist+orjson": pylist_orjson})]
