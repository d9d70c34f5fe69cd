"""Built-in IO processors: request data in, prompts out, results back."""
