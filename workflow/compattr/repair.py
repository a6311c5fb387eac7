"""Damage a job finds becomes work for the next run: the damaged output is logged, and the workflow rebuilds it.

Snakemake decides what to run from files' presence, times and a rule's parameters; it does not look
inside a Zarr store, and it does not regenerate a missing intermediate file whose consumers are up to
date. So a reader that meets a damaged store (:class:`~compattr.stores.StoreIntegrityError`,
:class:`~compattr.stores.NonFiniteMarginError`) records it in a **repair log** beside the job output
that holds the store, ``<output>.repairs.jsonl``, one line per finding. The workflow makes that log
an input of the job that writes the output (:func:`repair_logs`, the log only once it exists): a
new finding is newer than the output, so Snakemake reruns that job, the jobs it needs whose outputs
are missing, and every job downstream of it. A mask store's
damaged shards lose their manifests first (:func:`compattr.stores.check_mask_store` with
``repair``), so exactly those shards are sampled again, to the same bytes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from compattr.masks import expected_shard_masks
from compattr.stores import (
    DamagedShardsError,
    MaskStore,
    NonFiniteMarginError,
    StoreIntegrityError,
    check_mask_store,
    check_summary_path,
    fit_stores,
    load_fit,
)

__all__ = [
    "repair_log_path",
    "repair_logs",
    "findings",
    "mark_for_rebuild",
    "damaged_output",
    "rebuild_on_damage",
    "verify_outputs",
]


def repair_log_path(output: str | Path) -> Path:
    """The repair log of a job output (a file or a folder): ``<output>.repairs.jsonl`` beside it."""
    return Path(f"{str(output).rstrip('/')}.repairs.jsonl")


def repair_logs(outputs: Iterable[str | Path]) -> list[str]:
    """The repair logs of ``outputs`` that exist: as a job's inputs, a new finding reruns the job."""
    return [str(log) for log in map(repair_log_path, outputs) if log.is_file()]


def findings(output: str | Path) -> list[dict[str, str]]:
    """The findings logged against a job output (:func:`mark_for_rebuild`), oldest first: time, store, reason."""
    log = repair_log_path(output)
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def mark_for_rebuild(output: str | Path, store: str | Path, reason: str) -> Path:
    """Append a finding (when, which store, what is wrong) to the repair log of the job output ``output``."""
    log = repair_log_path(output)
    log.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "store": str(store), "reason": reason}
    with log.open("a") as stream:
        stream.write(json.dumps(record, sort_keys=True) + "\n")
    return log


def _is_mask_store(path: Path) -> bool:
    """Whether ``path`` is (or was, its metadata deleted) a mask store: it has shards or a ``masks`` array folder."""
    return path.with_suffix(".shards").is_dir() or (path / "masks").is_dir()


def _mark_faulty_shards(store: Path) -> None:
    """Check a mask store against its seed, deleting the manifests of its faulty shards (then raising)."""
    handle = MaskStore.open(store)
    check_mask_store(handle, partial(expected_shard_masks, handle), repair=True)


def damaged_output(error: StoreIntegrityError | NonFiniteMarginError, inputs: Iterable[str | Path]) -> Path | None:
    """The job output to rebuild for ``error``, after marking a mask store's faulty shards; None if unknown.

    A mask store: its faulty shards' manifests are deleted (every one, not only the shard read) and
    the output is the store's check summary (:func:`compattr.stores.check_summary_path`), whose job
    then samples them again. Any other store (a fit): the one of ``inputs`` that holds it.
    """
    if error.store is None:
        return None
    store = Path(error.store)
    if _is_mask_store(store):
        if not isinstance(error, DamagedShardsError):
            try:
                _mark_faulty_shards(store)
            except DamagedShardsError:
                pass  # marked: exactly these shards are sampled again
            except (StoreIntegrityError, FileNotFoundError, KeyError, ValueError):
                pass  # its metadata is gone: the whole store is created and sampled again
        return check_summary_path(store)
    resolved = store.resolve()
    for path in map(Path, inputs):
        if path.resolve() == resolved or path.resolve() in resolved.parents:
            return path
    return None


def rebuild_on_damage(inputs: Iterable[str | Path]) -> None:
    """From now on in this process, an uncaught damaged-store error marks the damaged output for rebuilding.

    For a workflow job: ``inputs`` are its input files. The error still ends the job (its traceback
    names the store); before, :func:`damaged_output` is logged (:func:`mark_for_rebuild`) and a line
    says that the next run rebuilds it.
    """
    inputs = [str(path) for path in inputs]
    previous = sys.excepthook

    def hook(kind, error, traceback):  # noqa: ANN001 - sys.excepthook's signature
        if isinstance(error, (StoreIntegrityError, NonFiniteMarginError)):
            output = damaged_output(error, inputs)
            if output is not None:
                reason = getattr(error, "reason", None) or str(error)
                log = mark_for_rebuild(output, error.store, reason)
                print(f"compattr: marked {output} to be rebuilt ({log}); run the workflow again", file=sys.stderr)
        previous(kind, error, traceback)

    sys.excepthook = hook


def verify_outputs(summaries: Iterable[str | Path], fits: Iterable[str | Path]) -> list[str]:
    """Check every mask store (by its check summary's path) and every fit store under ``fits``; mark what is damaged.

    Reads everything, changes nothing that is intact: a faulty shard loses its manifest, and each
    damaged output gets a line in its repair log (:func:`mark_for_rebuild`), so that the next run
    rebuilds exactly those and what depends on them. Returns one line per finding (none: all intact).
    """
    found = []
    for summary in map(Path, summaries):
        store = summary.with_name(summary.name.removesuffix(".summary.json") + ".zarr")
        try:
            _mark_faulty_shards(store)
        except (StoreIntegrityError, NonFiniteMarginError) as error:
            mark_for_rebuild(summary, store, error.reason if isinstance(error, StoreIntegrityError) else str(error))
            found.append(str(error))
    for output in map(Path, fits):
        try:
            for store in fit_stores(output):
                load_fit(store)
        except (StoreIntegrityError, ValueError) as error:
            mark_for_rebuild(output, output, str(error))
            found.append(str(error))
    return found
