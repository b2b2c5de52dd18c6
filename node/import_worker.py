"""Read and hash a big file in a worker process while this one inserts: two cores for one import.

`rewardnode import` spends about half its time reading, parsing, validating and hashing records
and half inside the database. `worker_batches` forks a process that reads the file and builds the
row batches (storage.rows.RowBuilder) and sends them through a pipe; this process only inserts.
The transaction stays here, so an import is still all-or-nothing: an error in the worker (FILE:LINE,
an invalid record) is raised here before anything is committed, and when this process stops
reading (an error, or being killed) the worker ends at its next send.

Only with fork() (Linux) and at least two usable cores: the worker starts in milliseconds with the
parser and the builder already in memory. It never touches the database connection it inherits:
it reads the file, hashes, pickles and writes to the pipe, with the garbage collector off (so no
inherited object is finalized there) and leaves with os._exit (no exit handlers run).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Generator, Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final

from node.errors import ImportFormatError, NodeError
from storage.records import Record
from storage.rows import RowBatch, RowBuilder, build_batches

if TYPE_CHECKING:
    from node.importing import Reject  # which imports this module

WORKER_MIN_BYTES: Final = 4 << 20
"""Files smaller than this (on disk) are read in this process: a worker would not pay for itself."""
WORKER_BATCH_RECORDS: Final = 2000
"""Records per batch the worker sends (at most the store's batch size): a batch (~0.7 MiB pickled)
fits the pipe, so the worker builds the next one while this process inserts the last."""
PIPE_BYTES: Final = 1 << 20
"""Pipe buffer asked for (Linux's default 64 KiB would make the worker wait on every batch it sends)."""

Rejects = Callable[["Reject"], None]
OpenRecords = Callable[[Rejects | None], Iterator[Record]]
"""open_records(rejects) -> the file's records, reporting skipped lines to `rejects`."""


def can_fork() -> bool:
    """True where a worker process can be forked and run beside this one."""
    return (sys.platform == "linux" and len(os.sched_getaffinity(0)) >= 2
            and not multiprocessing.current_process().daemon)  # daemonic processes may not have children


def worker_batches(open_records: OpenRecords, rejects: Rejects | None, builder: RowBuilder,
                   batch_size: int) -> Generator[RowBatch, None, None]:
    """The row batches of the records (<= batch_size records each), built in a forked worker process;
    `rejects` is called here, in line order."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    import fcntl  # POSIX only, like fork

    try:
        fcntl.fcntl(send.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size: the default 64 KiB pipe works, a little slower
    size = min(batch_size, WORKER_BATCH_RECORDS)
    worker = ctx.Process(target=_work, args=(open_records, rejects is not None, builder, size, receive, send),
                         name="rewardnode-import-reader", daemon=True)
    try:
        worker.start()
    except OSError:  # fork refused (out of memory, process limit): read the file in this process
        receive.close()
        send.close()
        yield from build_batches(open_records(rejects), builder, batch_size)
        return
    send.close()
    try:
        while True:
            try:
                kind, payload, rejected = receive.recv()
            except EOFError:
                worker.join(5)
                raise NodeError(f"the import's reader process ended unexpectedly (exit code {worker.exitcode}); "
                                "nothing was stored: run the import again") from None
            if rejects is not None:
                for reject in rejected:
                    rejects(reject)
            if kind == "batch":
                yield payload
            elif kind == "done":
                return
            else:
                raise _rebuild(*payload)  # kind == "error"
    finally:
        receive.close()
        if worker.is_alive():
            worker.kill()  # it holds nothing worth cleaning up
        worker.join()


def _work(open_records: OpenRecords, report_rejects: bool, builder: RowBuilder, batch_size: int,
          receive: Connection, send: Connection) -> None:
    """The worker: build every batch and send it; then "done", or the error that stopped it."""
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent too; it ends this process
    receive.close()
    rejected: list[Reject] = []

    try:
        try:
            for batch in build_batches(open_records(rejected.append if report_rejects else None), builder,
                                       batch_size):
                send.send(("batch", batch, rejected[:]))
                rejected.clear()
            send.send(("done", None, rejected))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the parent stopped reading: it failed or was killed
        except BaseException as exc:  # every error goes back to the parent
            send.send(("error", _portable(exc), rejected))
    except OSError:
        pass
    finally:
        os._exit(0)


def _portable(exc: BaseException) -> tuple[str, Any]:
    if isinstance(exc, ImportFormatError):  # its class too: a JSON file's error says "FILE: record N"
        return "format", (type(exc), exc.path, exc.line, exc.problem, exc.fix)
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return "pickled", data
    except Exception:  # not picklable: send its text
        return "text", "".join(traceback.format_exception(exc)).rstrip()


def _rebuild(kind: str, payload: Any) -> BaseException:
    if kind == "format":
        cls, *located = payload
        return cls(*located) if issubclass(cls, ImportFormatError) else ImportFormatError(*located)
    if kind == "pickled":
        exc = pickle.loads(payload)
        if isinstance(exc, BaseException):
            return exc
    return RuntimeError(f"the import's reader process failed:\n{payload}")


__all__ = ["WORKER_MIN_BYTES", "can_fork", "worker_batches"]
