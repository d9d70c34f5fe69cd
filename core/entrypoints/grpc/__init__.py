"""Text Embeddings Inference's gRPC API (``tei.v1``), served beside the HTTP server (``poolkit serve
--grpc-port``) by the same process, models, batchers and limits.

TEI's own ``tei.proto`` is kept unchanged in ``vendor/`` (with ``PROTO_ORIGIN.md`` and ``LICENSE.tei``)
and compiled when the server starts (:mod:`~poolkit.entrypoints.grpc.stubs`); each RPC reads its
message into TEI's request and runs the work the TEI HTTP routes run too (:mod:`poolkit.entrypoints.serving.tei`),
so both APIs answer alike (:mod:`~poolkit.entrypoints.grpc.service`); :mod:`~poolkit.entrypoints.grpc.server`
starts and stops it with the HTTP server. Needs the ``grpc`` extra.
"""
