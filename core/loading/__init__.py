"""Loading: a model directory becomes a :class:`~poolkit.loading.model.PoolingModel`.

``load`` is the pipeline (resolve the directory, read ``config.json`` and the
sentence-transformers files, pick the architecture, check the config against the checkpoint,
build, load the weights, load the tokenizer); ``model`` is what it returns: the network, the
tokenizer and the pooling settings resolved with their sources. ``model_dir``, ``weights`` and
``st_config`` read the files; ``spm_tokenizer`` reads a SentencePiece ``spiece.model`` as a fast
tokenizer. ``sources`` is the built-in plugin that says where model files come from (a local path,
a model package, the Hugging Face cache, the hub: ``poolkit_resolve_model``).

May import: ``contracts/``, ``plugins/``, ``config/``.
"""
