"""Loading: a model directory becomes a :class:`~poolkit.loading.model.PoolingModel`.

``load`` is the pipeline (resolve the directory, read ``config.json`` and the
sentence-transformers files, pick the architecture, check the config against the checkpoint,
build, load the weights, load the tokenizer); ``model`` is what it returns: the network, the
tokenizer and the pooling settings resolved with their sources. ``model_dir``, ``weights`` and
``st_config`` read the files.

May import: ``contracts/``, ``plugins/``, ``config/``.
"""
