"""Example handlers for orrery_worker.py (also used by its tests, services/api/tests/python_client.rs).

    python3 orrery_worker.py --queue math --handler examples.handlers:double
"""

import os
import time

from orrery_worker import PermanentError


def double(job):
    """The run's output is whatever the handler returns (JSON-serializable)."""
    if not isinstance(job.params.get("x"), (int, float)):
        raise PermanentError("params.x must be a number")
    return {"doubled": job.params["x"] * 2, "attempt": job.attempt}


def noop(job):
    """Does nothing (the benchmark's handler)."""
    return None


def _mark(job):
    marker = job.params.get("marker")
    if marker:
        with open(marker, "w") as f:
            f.write(f"{job.id} {job.attempt} {os.getpid()}\n")


def hang(job):
    """Starts, says so in params.marker, then works (for a very long time)."""
    _mark(job)
    time.sleep(3600)


def gated(job):
    """Starts, says so in params.marker, then waits for the file params.gate before returning."""
    _mark(job)
    deadline = time.monotonic() + 120
    while not os.path.exists(job.params["gate"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
        time.sleep(0.02)
    return {"late": True}
