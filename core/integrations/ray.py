"""Ray Data: embed a dataset on a cluster, one poolkit model per actor.

Built on ``Dataset.map_batches`` with a callable class, so Ray schedules the actors, streams the
blocks and retries failed tasks; poolkit only embeds each batch.

Example:
    >>> import ray
    >>> from poolkit.integrations.ray import embed_dataset
    >>> ds = ray.data.read_parquet("s3://bucket/corpus/")
    >>> embedded = embed_dataset(ds, model="BAAI/bge-base-en-v1.5", text_column="text", concurrency=8, num_gpus=1)
    >>> embedded.write_parquet("s3://bucket/embeddings/")
"""

from __future__ import annotations

from typing import Any

from ..errors import MissingDependency


class PoolkitBatchEncoder:
    """The callable class each Ray actor holds: loads the model once, encodes every batch it gets.

    Args:
        model: what ``poolkit.LLM`` loads.
        task: the pooling task (``embed``, ``classify``, ``token_embed``, ...).
        text_column: the column holding the texts.
        output_column: where results go (default ``embedding`` for ``embed``, else the task name).
        llm_kwargs: passed to ``poolkit.LLM``.
    """

    def __init__(self, model: str | None, task: str, text_column: str, output_column: str, llm_kwargs: dict[str, Any]) -> None:
        from poolkit import LLM

        self.llm = LLM(model, **llm_kwargs)
        self.task = task
        self.text_column = text_column
        self.output_column = output_column

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        texts = [str(t) for t in batch[self.text_column]]
        outputs = self.llm.encode(texts, pooling_task=self.task)
        values = [o.outputs.data.float().numpy() for o in outputs]
        if values and all(v.shape == values[0].shape for v in values):
            batch[self.output_column] = np.stack(values)
        else:  # per-token outputs of different lengths: one array per row
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[self.output_column] = column
        return batch


def embed_dataset(
    ds: Any,
    model: str | None = None,
    text_column: str = "text",
    task: str = "embed",
    *,
    output_column: str | None = None,
    batch_size: int = 256,
    concurrency: int = 1,
    num_gpus: float = 0,
    **llm_kwargs: Any,
) -> Any:
    """The dataset with a column of results (``embedding`` for ``task="embed"``).

    Args:
        ds: a ``ray.data.Dataset``.
        model: the model every actor loads (default: the embedded all-MiniLM-L6-v2).
        text_column: the column holding the texts.
        task: the pooling task.
        output_column: the result column's name.
        batch_size: rows per ``map_batches`` call.
        concurrency: how many actors (model copies) run.
        num_gpus: GPUs per actor, passed to Ray.
        **llm_kwargs: passed to ``poolkit.LLM`` in every actor (``dtype``, ``pooler_config``, ...).
    """
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MissingDependency("Ray Data is not installed: pip install 'poolkit[ray]'") from None
    column = output_column or ("embedding" if task == "embed" else task)
    return ds.map_batches(
        PoolkitBatchEncoder,
        fn_constructor_kwargs={
            "model": model,
            "task": task,
            "text_column": text_column,
            "output_column": column,
            "llm_kwargs": llm_kwargs,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )


def run_ray_job(llm: Any, input_path: str, output_path: str, *, task: str = "embed", text_field: str = "text",
                overwrite: bool = False) -> int:
    """``poolkit embed --engine ray -i INPUT -o OUTPUT``: read with Ray Data, embed, write Parquet.

    The output is a directory of Parquet files (Ray's way of writing in parallel); Ray retries
    failed tasks, and a finished output is refused unless ``overwrite``.
    """
    try:
        import ray
    except ImportError:
        raise MissingDependency("Ray Data is not installed: pip install 'poolkit[ray]'") from None
    import shutil
    from pathlib import Path

    from ..errors import InvalidRequest

    source, target = Path(input_path), Path(output_path)
    if not source.exists():
        raise InvalidRequest(f"input '{input_path}' does not exist")
    if target.exists():
        if not overwrite:
            raise InvalidRequest(f"output '{output_path}' already exists; pass --overwrite to replace it")
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    readers = {".parquet": ray.data.read_parquet, ".jsonl": ray.data.read_json, ".json": ray.data.read_json,
               ".csv": ray.data.read_csv}
    if source.suffix not in readers:
        raise InvalidRequest("--engine ray reads Parquet, JSON Lines or CSV input")
    ds = readers[source.suffix](str(source))
    rows = ds.count()
    out = embed_dataset(ds, model=str(llm.model.path), text_column=text_field, task=task,
                        dtype=str(llm.model.dtype).removeprefix("torch."))
    out.write_parquet(str(target))
    return rows
