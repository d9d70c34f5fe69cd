"""API: the Python surface: vLLM's ``LLM`` and sentence-transformers' classes on the runtime.

``llm`` is the façade (``LLM.embed``, ``classify``, ``score``, ``encode``...);
``st_compat``, ``st_multivector`` and ``st_functions`` are sentence-transformers' API on it;
``entities`` groups token-classification labels into entities.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``runtime/``.
"""
