# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-message loops of the Kafka source and sink, compiled (used by :mod:`._kafka`).

They make the same confluent-kafka calls the Python loops made, without the interpreter's
cost per message: sorting what ``Consumer.consume`` returned, and handing each encoded row
to ``Producer.produce``."""
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE


def take_messages(list got, list msgs, set at_eof, int eof_code):
    """Append the messages of ``got`` that carry a record to ``msgs`` (a partition with one is
    no longer at its end: removed from ``at_eof``); a partition-end event adds its
    ``(topic, partition)`` to ``at_eof``.  Returns the other error events, for the caller to
    count and log."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(got)
    cdef object m, err
    cdef list errors = None
    for i in range(n):
        m = <object>PyList_GET_ITEM(got, i)
        err = m.error()
        if err is None:
            msgs.append(m)
            if at_eof:
                at_eof.discard((m.topic(), m.partition()))
        elif err.code() == eof_code:
            at_eof.add((m.topic(), m.partition()))
        else:
            if errors is None:
                errors = []
            errors.append(m)
    return errors if errors is not None else []


def produce_all(object produce, object poll, object topic, list values, list keys,
                object kafka_exception):
    """``produce(topic, value, key)`` for every row; a full local queue is served
    (``poll(0.05)``) and the row produced again.  Returns ``[(row, exception)]`` of the rows
    the producer refused (``kafka_exception``, e.g. larger than ``message.max.bytes``)."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(values)
    cdef list refused = None
    if PyList_GET_SIZE(keys) != n:
        raise ValueError(f"{PyList_GET_SIZE(keys)} keys for {n} values")
    for i in range(n):
        while True:
            try:
                produce(topic, <object>PyList_GET_ITEM(values, i), <object>PyList_GET_ITEM(keys, i))
                break
            except BufferError:
                poll(0.05)
            except kafka_exception as exc:
                if refused is None:
                    refused = []
                refused.append((i, exc))
                break
    return refused if refused is not None else []
