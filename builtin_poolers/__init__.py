"""Built-in poolers, activations and tasks, registered through the plugin hooks."""
