"""Ray Data: embed a dataset on a cluster, one poolkit model per actor.

Built on ``Dataset.map_batches`` with a callable class, so Ray schedules the actors, streams the
blocks and retries failed tasks; poolkit only embeds each batch. As a local corpus job does, it
truncates an input longer than the model's limit (unless the request chooses a truncation) and
says which rows it cut, in a ``truncated`` column.

Example:
    >>> import ray
    >>> from poolkit.entrypoints.integrations.ray import embed_dataset
    >>> ds = ray.data.read_parquet("s3://bucket/corpus/")
    >>> embedded = embed_dataset(ds, model="BAAI/bge-base-en-v1.5", text_column="text", concurrency=8, num_gpus=1)
    >>> embedded.write_parquet("s3://bucket/embeddings/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest, MissingDependency
from ...contracts.params import PoolingParams
from ..jobs import JobSummary, truncating

if TYPE_CHECKING:
    from ...api.llm import LLM

#: The column that says whether a row's input was cut to the truncation limit.
TRUNCATED_COLUMN = "truncated"


class PoolkitBatchEncoder:
    """The callable class each Ray actor holds: loads the model once, encodes every batch it gets.

    Args:
        args: the :class:`poolkit.config.settings.EngineArgs` every actor loads with, as a dict (what
            ``EngineArgs.model_dump()`` gives; Ray ships it to the actors).
        task: the pooling task (``embed``, ``classify``, ``token_embed``, ...).
        text_column: the column holding the texts.
        output_column: where results go (default: the task's output field, ``embedding`` for ``embed``).
        pooling_params: the request's :class:`poolkit.PoolingParams` fields, as a dict; inputs are
            truncated to the model's limit unless they choose a truncation
            (:func:`poolkit.entrypoints.jobs.truncating`).
        prompt_name: a prompt of the model's sentence-transformers config to prepend.
        truncated_column: where to say whether each row's input was cut (``None``: nowhere).
        tokenization_kwargs: passed to ``encode`` (a late-interaction model's side:
            :func:`poolkit.inputs.request.side_kwargs`).
    """

    def __init__(
        self,
        args: dict[str, Any],
        task: str,
        text_column: str,
        output_column: str | None,
        pooling_params: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        truncated_column: str | None = TRUNCATED_COLUMN,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from poolkit import LLM

        from ...config.settings import EngineArgs

        self.llm = LLM.from_args(EngineArgs(**args))
        self.task = task
        self.text_column = text_column
        self.output_column = output_column or self.llm.task(task).output_field
        self.pooling_params = truncating(pooling_params)
        self.prompt_name = prompt_name
        self.truncated_column = truncated_column
        self.tokenization_kwargs = tokenization_kwargs

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        texts = [str(t) for t in batch[self.text_column]]
        outputs = self.llm.encode(
            texts, self.pooling_params, pooling_task=self.task, prompt_name=self.prompt_name,
            tokenization_kwargs=self.tokenization_kwargs,
        )
        values = [o.outputs.data.float().numpy() for o in outputs]
        if values and all(v.shape == values[0].shape for v in values):
            batch[self.output_column] = np.stack(values)
        else:  # per-token outputs of different lengths: one array per row
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[self.output_column] = column
        if self.truncated_column is not None:
            batch[self.truncated_column] = np.array([o.truncated for o in outputs], dtype=bool)
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
    args: EngineArgs | None = None,
    pooling_params: PoolingParams | dict[str, Any] | None = None,
    prompt_name: str | None = None,
    truncated_column: str | None = TRUNCATED_COLUMN,
    tokenization_kwargs: dict[str, Any] | None = None,
    **llm_kwargs: Any,
) -> Any:
    """The dataset with a column of results (the task's output field: ``embedding`` for ``embed``).

    A corpus does not fail on one long row: an input longer than the model's limit is truncated
    to it, as ``poolkit embed -i ... -o ...`` does, unless ``pooling_params`` choose a truncation
    (``truncate_prompt_tokens``, or a ``truncation_side``). The ``truncated`` column says which
    rows were cut.

    Args:
        ds: a ``ray.data.Dataset``.
        model: the model every actor loads (default: the embedded all-MiniLM-L6-v2).
        text_column: the column holding the texts.
        task: the pooling task.
        output_column: the result column's name.
        batch_size: rows per ``map_batches`` call.
        concurrency: how many actors (model copies) run.
        num_gpus: GPUs per actor, passed to Ray.
        args: the load settings (``llm.args`` of a loaded model); instead of ``model`` and
            ``**llm_kwargs``.
        pooling_params: per-request parameters (``dimensions``, ``truncate_prompt_tokens``, ...).
        prompt_name: a prompt of the model's sentence-transformers config to prepend.
        truncated_column: the boolean column saying whether each row's input was cut to the
            truncation limit (``None``: no such column).
        tokenization_kwargs: passed to every ``encode`` (``side_kwargs("document")``: a
            late-interaction model's document side, :func:`poolkit.inputs.request.side_kwargs`).
        **llm_kwargs: settings for ``poolkit.LLM`` in every actor (``dtype``, ``pooler_config``, ...).
    """
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MissingDependency("Ray Data is not installed: pip install 'poolkit[ray]'") from None
    if args is None:
        args = EngineArgs(model=model, **llm_kwargs)
    elif model is not None or llm_kwargs:
        raise InvalidRequest("pass the load settings either as args or as model and keyword arguments, not both")
    params = truncating(pooling_params).model_dump(exclude_unset=True)  # refused here if bad, not in every actor
    return ds.map_batches(
        PoolkitBatchEncoder,
        fn_constructor_kwargs={
            "args": args.model_dump(exclude_defaults=True),
            "task": task,
            "text_column": text_column,
            "output_column": output_column,
            "pooling_params": params,
            "prompt_name": prompt_name,
            "truncated_column": truncated_column,
            "tokenization_kwargs": tokenization_kwargs,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )


def run_ray_job(
    llm: "LLM",
    input_path: str,
    output_path: str,
    *,
    task: str = "embed",
    text_field: str = "text",
    overwrite: bool = False,
    pooling_params: PoolingParams | None = None,
    prompt_name: str | None = None,
) -> JobSummary:
    """``poolkit embed --engine ray -i INPUT -o OUTPUT``: read with Ray Data, embed, write Parquet.

    Every actor loads the model with the settings ``llm`` was loaded with (``llm.args``) and runs
    the request's parameters, so the output equals a local job's. The output is a directory of
    Parquet files (Ray's way of writing in parallel) with a ``truncated`` column; Ray retries
    failed tasks, and a finished output is refused unless ``overwrite``.

    Returns:
        The rows and how many of them were truncated (``rows``, ``written``, ``truncated``).
    """
    try:
        import ray
    except ImportError:
        raise MissingDependency("Ray Data is not installed: pip install 'poolkit[ray]'") from None
    import shutil
    from pathlib import Path

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
    params = truncating(pooling_params)
    llm.check_params(params, 1, llm.task(task).name)  # refuse bad parameters before Ray starts
    ds = readers[source.suffix](str(source))
    rows = ds.count()
    out = embed_dataset(ds, text_column=text_field, task=task, args=llm.args, pooling_params=params,
                        prompt_name=prompt_name)
    out.write_parquet(str(target))
    return JobSummary(output=output_path, rows=rows, written=rows, truncated=_truncated_rows(target) if rows else 0)


def _truncated_rows(output: Any) -> int:
    """The rows of a written output whose input was cut (its ``truncated`` column alone is read)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return pc.sum(pq.read_table(str(output), columns=[TRUNCATED_COLUMN])[TRUNCATED_COLUMN]).as_py() or 0


def run_ray_index_job(
    llm: "LLM",
    input_path: str,
    index_path: str,
    *,
    token_pool_factor: float | None = None,
    ann: bool | None = None,
    precision: str = "float32",
    text_field: str = "text",
    id_field: str = "id",
    overwrite: bool = False,
    batch_size: int = 256,
) -> JobSummary:
    """``poolkit index --engine ray``: encode a corpus on Ray Data into a late-interaction index.

    The actors encode on the model's document side with the pool factor, as a local index job
    (:func:`poolkit.entrypoints.index_job.run_index_job`) does, and this process writes their rows
    into the same table (:meth:`poolkit.api.index.LateInteractionIndex.add_vectors`). The input
    needs an id column (Ray Data does not keep row order). Ray retries failed tasks; an existing
    index is refused unless ``overwrite``.

    Raises:
        InvalidRequest: a missing input, no id column, a bad pool factor, an existing index.
    """
    try:
        import ray
    except ImportError:
        raise MissingDependency("Ray Data is not installed: pip install 'poolkit[ray]'") from None
    from pathlib import Path

    from ...api.index import UNPOOLED, LateInteractionIndex, has_sides
    from ...inputs.request import side_kwargs

    source = Path(input_path)
    if not source.is_file():
        raise InvalidRequest(f"input '{input_path}' does not exist")
    readers = {".parquet": ray.data.read_parquet, ".jsonl": ray.data.read_json, ".csv": ray.data.read_csv}
    if source.suffix not in readers:
        raise InvalidRequest("--engine ray reads Parquet, JSON Lines or CSV input")
    params = truncating(PoolingParams(token_pool_factor=token_pool_factor))
    llm.check_params(params, 1, "token_embed")  # refuse bad parameters before Ray starts
    index = LateInteractionIndex.create(
        index_path, llm, token_pool_factor=token_pool_factor, overwrite=overwrite, precision=precision
    )
    index.auto_ann = ann is not False
    ds = readers[source.suffix](str(source))
    if id_field not in ds.columns():
        raise InvalidRequest(f"--engine ray needs an id column ('{id_field}') in '{source.name}'")
    kwargs = side_kwargs("document", has_sides(llm))
    # The index's own factor, or 1 (nothing clustered): either way the engine leaves the skiplist's
    # tokens out first, so the rows are what LLM.score scores (unpooled output keeps every token).
    params = params.model_copy(update={"token_pool_factor": index.identity.token_pool_factor or UNPOOLED})
    out = embed_dataset(ds, text_column=text_field, task="token_embed", args=llm.args, pooling_params=params,
                        tokenization_kwargs=kwargs, batch_size=batch_size)
    summary = JobSummary(output=index_path)
    for batch in out.iter_batches(batch_size=batch_size, batch_format="numpy"):
        ids = batch[id_field].tolist()
        index.add_vectors(ids, list(batch["data"]))
        summary.rows += len(ids)
        summary.truncated += int(batch[TRUNCATED_COLUMN].sum())
    if summary.rows == 0:
        raise InvalidRequest(f"input file '{source.name}' has no rows")
    summary.written = summary.rows
    if ann and not index.has_ann_index():
        index.create_ann_index()
    index.settle()  # an overwritten table's older versions go
    return summary
