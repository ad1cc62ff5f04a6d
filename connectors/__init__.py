"""Where samples come from and where results go: sources, sinks and the registry that opens them by URI.

Modules, one concept each:

- :mod:`connectors.base`: the contracts (``Batch``, ``Source``, ``Sink``)
- :mod:`connectors.registry`: ``open_source``/``open_sink`` by URI: schemes, built-ins, plug-ins (entry points)
- :mod:`connectors.batching`: micro-batching (``batch_size``, ``max_latency_ms``) and the ``BatchingSource`` base
- :mod:`connectors.counters`: counting input and rejects by reason, rate-limited logging
- :mod:`connectors.samples`: dtypes, sample shapes, non-finite values, JSON samples
- :mod:`connectors.wire`: wire format v1 (ZeroMQ messages)
- :mod:`connectors.zmq`: ``ZmqSource`` (PULL/SUB), ``ZmqSink`` (PUB), ``ZmqProducer`` (a package)
- :mod:`connectors.curve`: CurveZMQ keys and authentication
- :mod:`connectors.lines`: a resumable line cursor that follows a file like ``tail -F``
- :mod:`connectors.paths`: a path, a directory or a glob as an ordered series of files
- :mod:`connectors.text`: the base of the line-oriented sources (files, follow mode, positions)
- :mod:`connectors.csv_source`, :mod:`connectors.jsonl_source`: CSV and JSON Lines sources
- :mod:`connectors.arrays`: ``.npy`` and ``.npz`` sources
- :mod:`connectors.records`, :mod:`connectors.jsonl_sink`: per-sample records and the JSON Lines sink
- :mod:`connectors.prefetch`: ``ProcessSource``, a file source read ahead in a child process
- :mod:`connectors.files`: the file schemes the registry serves
- :mod:`connectors.send`: the ``streammas send`` command

Nothing heavy is imported here: ``import connectors.base`` needs neither ZeroMQ nor any file.
"""
