"""Text Embeddings Inference's gRPC API (``tei.v1``), served beside the HTTP server (``poolkit serve
--grpc-port``) by the same process, models, batchers and limits.

TEI's own ``tei.proto`` is kept here unchanged (``PROTO_ORIGIN.md``, ``LICENSE.tei``) and compiled
when the server starts (:mod:`~poolkit.entrypoints.grpc.stubs`); each RPC runs the work of the TEI
HTTP route it mirrors (:mod:`poolkit.entrypoints.server.routes_tei`), so both APIs answer alike
(:mod:`~poolkit.entrypoints.grpc.service`); :mod:`~poolkit.entrypoints.grpc.server` starts and
stops it with the HTTP server. Needs the ``grpc`` extra.
"""
