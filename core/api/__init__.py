"""API: the Python surface: vLLM's ``LLM`` and sentence-transformers' classes on the runtime.

``llm`` is the façade (``LLM.embed``, ``classify``, ``score``, ``encode``...), which prepares
requests, has the model's renderer (``inputs/``) turn their inputs into prompts and runs them on the
runtime, and ``async_llm`` the same methods awaited (``AsyncLLM``: calls merged on the server's
batcher); ``calls`` is what both do around the run (the task ``encode`` runs, the outputs of each
method, ``rerank``'s ranking). What the façade applies has a module each: ``params`` (a request's pooling parameters checked and
completed), ``plugin_io``
(the IO processor plugin of ``pooling_task="plugin"``), ``entities`` (token labels grouped into
entities) and ``model_config`` (vLLM's view of the loaded model). ``st_compat``,
``st_multivector`` and ``st_functions`` are sentence-transformers' API on it; ``index`` is a
late-interaction index (a LanceDB table of token vectors) built and searched with a model.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``lora/``, ``runtime/``, ``inputs/``.
"""
