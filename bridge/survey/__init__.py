"""Looking at a broker: what ``discover`` and ``tap`` make of the messages a side session sees.

Pure code: messages come in as topic, payload bytes and receive time; no I/O, no MQTT.

- :mod:`.kinds`: what a payload is (JSON object, number, boolean-like, text, binary).
- :mod:`.topics`: per-topic counts, kinds and samples, with caps on topics and samples.
- :mod:`.patterns`: topics grouped into topic filters with captures.
- :mod:`.drafts`: a draft mapping file (recipes and generic rules, with tests).
- :mod:`.against`: what an existing mapping file would do with what was seen.
- :mod:`.tap`: messages through the mapper and the sender's batcher, nothing sent.
"""
