"""Runtime: running a task over prompts on a loaded model.

``tokenizing`` tokenizes and truncates prompts (the engine's ``PromptTokenizer``); ``engine`` chunks,
sorts by length, packs token-budget batches and runs the forward pass and the task's head, on an
accelerator one batch queued behind another (``inflight``); ``prefix`` computes shared prefixes
once; ``batching`` gathers concurrent server requests into those
batches; ``columns`` holds the per-input results; ``estimates`` is the one characters-per-token
rule; ``allocator`` tunes glibc's malloc for CPU inference; ``progress`` is the progress bar;
``adapter_runs`` pins a batch's LoRA adapters and tells the layers which tokens each one owns.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``lora/``.
"""
