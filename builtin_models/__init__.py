"""Built-in model architectures, each module a plugin that registers its classes."""
