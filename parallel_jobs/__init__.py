"""parallel_jobs: run one function over many inputs in parallel.

A drop-in for ``sciris.parallelize`` / ``sciris.Parallel`` that survives crashed and hung
workers, chunks tiny tasks, shares big arrays without copying, shows progress and load, and
reports where the time and memory went.

Examples:
    >>> import parallel_jobs as pj
    >>> def square(x):
    ...     return x * x
    >>> pj.parallelize(square, range(4), parallelizer="serial")
    [0, 1, 4, 9]
"""

from ._cpus import cpu_count
from .api import Parallel, imap, load_checkpoint, parallelize
from .backends import PARALLELIZERS
from .backends.kept import release_workers
from .engine.monitor import LoadMonitor, LoadSample
from .errors import (
    CheckpointError,
    InitializerError,
    MemoryLimitError,
    ParallelJobsError,
    RemoteTaskError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    UnknownParallelizerError,
    WorkerCrashedError,
)
from .records import Task, TaskResult
from .worker_health import worker_state

__version__ = "0.3.0"

__all__ = [
    "PARALLELIZERS",
    "CheckpointError",
    "InitializerError",
    "LoadMonitor",
    "LoadSample",
    "MemoryLimitError",
    "Parallel",
    "ParallelJobsError",
    "RemoteTaskError",
    "RemoteTraceback",
    "SerializationError",
    "Task",
    "TaskResult",
    "TaskTimeoutError",
    "UnknownParallelizerError",
    "WorkerCrashedError",
    "__version__",
    "cpu_count",
    "imap",
    "load_checkpoint",
    "parallelize",
    "release_workers",
    "worker_state",
]
