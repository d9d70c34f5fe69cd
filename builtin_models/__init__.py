"""Built-in model architectures: a module or folder per family, named after it, each a plugin that
registers its classes (a folder through its ``__init__``); the building blocks the families share are
in ``blocks/``, their linear layers in ``layers``."""
