"""Sparkplug B (Eclipse Sparkplug 3.0, and 2.2 whose payload schema is the same): the payload
schema (``sparkplug_b.proto``, compiled with the official protobuf runtime), and pure functions
that decode payloads and topics and turn metric values into numbers (:mod:`.decode`,
:mod:`.values`, :mod:`.topic`), and build payloads for tests and the demo (:mod:`.encode`).

Nothing here does I/O or keeps state: alias tables, sequence tracking and the mapping rules are
built on these functions elsewhere.
"""
