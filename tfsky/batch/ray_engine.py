"""Run a `tfsky.batch` job on a Ray cluster with Ray Data (``--engine ray``).

The pending items become a dataset of item numbers; ``Dataset.map`` sends
them to an actor pool of `_Worker` s (each given the task and the list of
pending paths once), each of which loads the model once (`Task.load`) and
then reads, works on and writes one item at a time (`Task.read` +
`Task.process`), straight into the output folder with the usual
temp-then-rename writes. The driver only sends numbers and receives
``(index, reason)`` rows back: it never holds an image. Skip-complete and
stale-temp cleanup happen on the driver before the dataset is built, so a
re-run after a killed driver or worker finishes the job.

A worker that dies (killed, out of memory, its node lost) is restarted
(``max_restarts=-1``) and its item tried again on the new one, `ITEM_ATTEMPTS`
tries in all (``max_task_retries``; Ray Data's default retries forever, so one
item too big for a worker would never let the job end); after that the item
fails alone (`WORKER_DIED`, with ``max_errored_blocks=-1`` so the dataset goes
on). Errors in an item are answered by the worker (`_Worker`), so the only
blocks Ray Data itself sees fail are those of dead workers.

Inputs and the output folder must be on a file system every node sees at
the same path (a shared mount), or the output in an object store
(``s3://...``, `tfsky.io.stores`) that every node can write to; workers run in the driver's working folder,
so relative paths, sidecars and failure reasons are those of the local
engine. One worker per GPU when the cluster has GPUs (``gpus_per_worker=1``),
CPU workers otherwise; each worker reserves ``cpus_per_worker`` CPUs and runs
TensorFlow with that many threads. A model that cannot be loaded stops the
job with its error, as on the local engine.

Ray is an optional extra: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import traceback
import warnings
from typing import Iterator, Optional

from tfsky.batch.runner import Decoded, Listener, Pending, Report, Task, attempt, record
from tfsky.errors import TfskyError, first_line
from tfsky.io.atomic import remove_stale_temps

try:
    import ray
    import ray.data
except ImportError:  # the CLI turns this into one line saying how to install it
    ray = None  # type: ignore[assignment]  # RayEngine checks for it

CONNECT_TIMEOUT = 10  # seconds to reach a cluster's head before giving up
ITEM_ATTEMPTS = 3  # a worker that dies on an item is restarted and the item retried, this many tries in all
WORKER_DIED = f"its Ray worker process died on it {ITEM_ATTEMPTS} times (killed, or out of memory?)"
INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray[data]==2.60.0')"


class RayEngine:
    """A `tfsky.batch.Engine` that spreads the items over the workers of a Ray cluster.

    Args:
        address: str. ``auto``, ``HOST:PORT`` of a running cluster, or None to start Ray on this machine.
        workers: int. Worker processes (actors). Defaults to None: one per GPU (``gpus_per_worker``
            each) when the cluster has GPUs, else the cluster's CPUs // ``cpus_per_worker``.
        gpus_per_worker: float. Defaults to None: 1 if the cluster has GPUs, else 0.
        cpus_per_worker: int. CPUs reserved per worker and its TensorFlow thread count. Defaults to 1.

    Raises:
        TfskyError: Ray Data is not installed.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        workers: Optional[int] = None,
        gpus_per_worker: Optional[float] = None,
        cpus_per_worker: int = 1,
    ):
        if ray is None:
            raise TfskyError(f"--engine ray: Ray Data is not installed; install it with {INSTALL_HINT}")
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker

    def run(self, task: Task, pending: Pending, report: Report, listener: Listener) -> None:
        with _native_stderr_muted():
            self._run(task, pending, report, listener)

    def _run(self, task: Task, pending: Pending, report: Report, listener: Listener) -> None:
        self._connect()
        try:
            workers, gpus = self._sizes()
            rows = [{"index": index} for index in range(len(pending))]
            with warnings.catch_warnings():  # Ray 2.60 names no parameter for these two yet ("deprecated" **kwargs)
                warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
                results = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
                    # a callable class (an actor pool): Ray's hint allows it, mypy cannot match its protocol
                    _Worker,  # type: ignore[arg-type]
                    fn_constructor_args=(task, pending, os.getcwd()),
                    compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows)), max_tasks_in_flight_per_actor=1),
                    num_cpus=self.cpus_per_worker,
                    num_gpus=gpus,
                    runtime_env={"env_vars": {**thread_limits(self.cpus_per_worker), "TF_CPP_MIN_LOG_LEVEL": "2"}},
                    max_restarts=-1,
                    max_task_retries=ITEM_ATTEMPTS - 1,
                )
            unanswered = set(range(len(pending)))
            for row in results.iter_rows():
                source = pending[row["index"]][0].source
                if row["bug"]:
                    raise RuntimeError(f"a Ray worker failed on {source}:\n{row['bug']}")
                if row["stops"]:
                    raise TfskyError(row["reason"])
                unanswered.discard(row["index"])
                record(report, listener, source, row["reason"] or None)
            for index in sorted(unanswered):  # its worker died ITEM_ATTEMPTS times on it
                record(report, listener, pending[index][0].source, WORKER_DIED)
        except ray.exceptions.RayError as err:
            raise TfskyError(f"Ray cluster {self.address or 'local'}: {first_line(err)}") from None
        finally:
            ray.shutdown()

    def _connect(self) -> None:
        """Join the cluster quietly (no Ray or Ray Data logs or bars: the CLI draws its own progress)."""
        if self.address and self.address != "auto":
            _check_reachable(self.address)
        try:
            ray.init(
                address=self.address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
                configure_logging=True,
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise TfskyError(f"--address {self.address}: cannot join a Ray cluster ({first_line(err)})") from None
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        context.max_errored_blocks = -1  # an item whose worker keeps dying fails alone (WORKER_DIED)
        for name in ("ray", "ray.data"):  # errors that end the job are raised, and reported in one line
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def _sizes(self) -> tuple[int, float]:
        """(workers, GPUs per worker) from the options and the cluster's resources."""
        resources = ray.cluster_resources()
        cluster_gpus = resources.get("GPU", 0)
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1 if cluster_gpus >= 1 else 0)
        if self.workers:
            return self.workers, gpus
        if gpus:
            return max(1, int(cluster_gpus // gpus)), gpus
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker)), gpus


class _Worker:
    """One actor of the pool: loads the model once, then reads, processes and writes one item per call.

    Each call answers ``{index, reason, stops, bug}``: ``reason`` is the item's failure ("" when done);
    ``stops`` marks an error that stops the job (the model cannot be loaded, `Task.stops_the_job`) with
    ``reason`` as its line; ``bug`` is the traceback of any other exception, which the driver raises.
    """

    def __init__(self, task: Task, pending: Pending, cwd: str):
        os.chdir(cwd)
        self.task, self.pending = task, pending
        self.load_error = ""
        try:
            self.task.load()
        except (TfskyError, OSError) as err:
            self.load_error = str(err)

    def __call__(self, row: dict) -> dict:
        task, (item, outputs) = self.task, self.pending[row["index"]]
        answer = {"index": row["index"], "reason": "", "stops": False, "bug": ""}
        if self.load_error:
            return {**answer, "reason": self.load_error, "stops": True}
        for path in outputs:  # what a worker that died on this item (a retry) left
            remove_stale_temps(path)
        try:
            reason = attempt(
                task, item.source, lambda: task.process(item, Decoded(task.read(item.source)), outputs, Listener())
            )
        except (TfskyError, OSError) as err:
            return {**answer, "reason": str(err), "stops": True}
        except Exception:
            return {**answer, "bug": traceback.format_exc()}
        return {**answer, "reason": reason or ""}


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Send what Ray's C++ core writes to file descriptor 2 to /dev/null; Python's `sys.stderr` stays visible.

    The core logs warnings such as "actor has constructor arguments in the
    object store" straight to the driver's stderr, which is for one line per
    failure only. `sys.stderr` is re-opened on a copy of the original descriptor,
    so the progress bar and failure lines (and Python tracebacks) still show.
    """
    sys.stderr.flush()
    python_stderr = sys.stderr
    terminal = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = open(terminal, "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(sys.stderr.fileno(), 2)
        sys.stderr.close()
        sys.stderr = python_stderr


def thread_limits(threads: int) -> dict[str, str]:
    """Environment that limits TensorFlow's thread pools and oneDNN's OpenMP threads to ``threads``."""
    return {name: str(threads) for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}


def _check_reachable(address: str) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on: Ray itself would retry for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TfskyError(f"--address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise TfskyError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None
