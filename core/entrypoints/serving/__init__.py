"""The serving layer: what the server does for a request, whatever door it came in by.

HTTP routes (:mod:`poolkit.entrypoints.server`) and gRPC methods (:mod:`poolkit.entrypoints.grpc`)
are adapters: each parses its wire format, calls the work here with a :class:`~.call.Call` and the
served model, and writes the answer in its own format. What every door must hold is held here once:
the API key and a model's readiness (:mod:`.door`), the one admission limit (:mod:`.admission`),
the client going away (:class:`~.call.Call`), and the work of each API with its checks and limits
(:mod:`.tei`: Text Embeddings Inference's routes and RPCs).
"""
