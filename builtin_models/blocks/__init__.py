"""The building blocks the built-in model families share, each module named for what it holds:
attention (layer types, head width, the heads' base), norms (RMSNorm, LayerNorm in float32, the
post-norm residual), rotary positions, embeddings (token types, the position limit), feed-forward
layers, config checks, the classifier and LM heads, int8 quantization, the linear layers run through
a kernel with their LoRA adapters' products (``linear``), and what the vision-language families
share (``vision_language``: the placeholder scatter, the text-config view, checkpoint names).

A family imports these from here. Compute kernels are reached only through the kernel registry
(:func:`poolkit.plugins.lookup.kernel_for`), never by import.
"""
