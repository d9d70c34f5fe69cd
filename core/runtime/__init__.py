"""Runtime: running a task over prompts on a loaded model.

``engine`` tokenizes, truncates or chunks, sorts by length, packs token-budget batches and runs
the forward pass and the task's head; ``batching`` gathers concurrent server requests into those
batches; ``columns`` holds the per-input results; ``estimates`` is the one characters-per-token
rule; ``allocator`` tunes glibc's malloc for CPU inference; ``progress`` is the progress bar.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``lora/``.
"""
