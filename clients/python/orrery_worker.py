#!/usr/bin/env python3
"""A reference external worker for Orrery, standard library only (docs/external-workers.md).

Tasks whose pipeline is one `external` step wait in their queue until a program claims them over the API. This
module is such a program: it claims jobs (`POST /jobs/claim`, long-polling), runs a Python function for each,
keeps the lease alive with heartbeats from a background thread while the function runs, and completes or fails
the job with its fencing token. A result refused with 409 (the lease expired and another worker took the job)
is discarded, as the protocol requires.

As a library::

    from orrery_worker import Worker, PermanentError

    def send_email(job):
        if "@" not in job.params["to"]:
            raise PermanentError("bad address")      # dead at once, no retry
        return {"message_id": smtp_send(job.params)}  # the run's output

    Worker("http://localhost:8080", token, ["emails"], send_email).run_forever()

From the command line (token from ORRERY_TOKEN)::

    python3 orrery_worker.py --url http://localhost:8080 --queue emails --handler mymodule:send_email

Any other exception fails the job as retryable: it runs again after the task's backoff until its max_retries.
"""

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

__all__ = ["Client", "Job", "Worker", "PermanentError", "OrreryError", "LeaseLost"]


class OrreryError(Exception):
    """A non-2xx answer of the API: `status` and the error envelope in `body`."""

    def __init__(self, status, body):
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        super().__init__(f"HTTP {status}: {self.body.get('message', body)}")


class LeaseLost(OrreryError):
    """409 (the job is no longer held with this fencing token) or 404 (it is gone): discard the result."""


class PermanentError(Exception):
    """Raise from a handler for a failure that no retry can fix: the job goes dead at once."""


class Client:
    """The four calls of the protocol. Every method returns the decoded JSON answer or raises OrreryError."""

    def __init__(self, base_url, token, timeout=60):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _post(self, path, body, timeout=None):
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method="POST",
            headers={
                "Authorization": "Bearer " + self.token,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                text = answer.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                envelope = json.loads(text)
            except ValueError:
                envelope = {"message": text.decode(errors="replace")}
            error = LeaseLost if e.code in (404, 409) and "/jobs/" in path and path != "/jobs/claim" else OrreryError
            raise error(e.code, envelope) from None

    def claim(self, queues, max_jobs=1, wait_seconds=0, lease_seconds=None, client_id=None):
        body = {"queues": list(queues), "max_jobs": max_jobs, "wait_seconds": wait_seconds}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if client_id is not None:
            body["client_id"] = client_id
        answer = self._post("/jobs/claim", body, timeout=wait_seconds + self.timeout)
        return [Job(self, j) for j in answer["jobs"]]

    def heartbeat(self, job_id, fencing_token, lease_seconds=None):
        body = {"fencing_token": fencing_token}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return self._post(f"/jobs/{job_id}/heartbeat", body)

    def complete(self, job_id, fencing_token, output=None):
        return self._post(f"/jobs/{job_id}/complete", {"fencing_token": fencing_token, "output": output})

    def fail(self, job_id, fencing_token, error, retryable=True, output=None):
        body = {"fencing_token": fencing_token, "error": str(error)[:10000] or "failed", "retryable": retryable}
        if output is not None:
            body["output"] = output
        return self._post(f"/jobs/{job_id}/fail", body)


class Job:
    """One claimed job. `params`, `event`, `attempt`, `idempotency_key` are what a handler usually needs."""

    def __init__(self, client, data):
        self._client = client
        self.data = data
        self.id = data["job_id"]
        self.fencing_token = data["fencing_token"]
        self.task_id = data["task_id"]
        self.queue = data["queue"]
        self.attempt = data["attempt"]
        self.max_attempts = data["max_attempts"]
        self.params = data.get("params") or {}
        self.event = data.get("event")
        self.trigger = data["trigger"]
        self.idempotency_key = data["idempotency_key"]
        self.lease_expires_at = data["lease_expires_at"]
        self.lease_lost = threading.Event()

    def __repr__(self):
        return f"Job(id={self.id}, queue={self.queue!r}, attempt={self.attempt})"


class Worker:
    """Claims jobs of `queues` and runs `handler(job)` for each, one at a time.

    `heartbeat_seconds`: how often the lease is renewed while a handler runs (default a third of the lease;
    0 = never, the lease then ends `lease_seconds` after the claim). `on_result(job, outcome, detail)` is called
    after each job with outcome `completed`, `failed` or `discarded`.
    """

    def __init__(self, base_url, token, queues, handler, client_id=None, max_jobs=1, wait_seconds=20,
                 lease_seconds=60, heartbeat_seconds=None, on_result=None, timeout=60):
        self.client = Client(base_url, token, timeout=timeout)
        self.queues = list(queues)
        self.handler = handler
        self.client_id = client_id or f"{os.uname().nodename}-{os.getpid()}"[:100]
        self.max_jobs = max_jobs
        self.wait_seconds = wait_seconds
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = lease_seconds / 3 if heartbeat_seconds is None else heartbeat_seconds
        self.on_result = on_result or (lambda job, outcome, detail: None)
        self.stopping = threading.Event()

    def stop(self):
        """Finish the jobs in hand, claim no more."""
        self.stopping.set()

    def run_once(self):
        """One claim (waiting up to wait_seconds), every job it returned run; returns the number of jobs."""
        jobs = self.client.claim(self.queues, self.max_jobs, self.wait_seconds, self.lease_seconds, self.client_id)
        for job in jobs:
            self.run_job(job)
        return len(jobs)

    def run_forever(self, until_empty=False):
        """Claims and runs until stop() (or SIGTERM in the CLI); with until_empty, also when a claim finds none."""
        while not self.stopping.is_set():
            try:
                n = self.run_once()
            except OrreryError as e:
                if e.status in (401, 403, 422):
                    raise
                self._pause(e)
                continue
            except OSError as e:
                self._pause(e)
                continue
            if n == 0 and until_empty:
                return

    def _pause(self, error):
        print(f"orrery_worker: {error}; retrying in 1s", file=sys.stderr, flush=True)
        self.stopping.wait(1.0)

    def _heartbeat(self, job, done):
        while not done.wait(self.heartbeat_seconds):
            try:
                answer = self.client.heartbeat(job.id, job.fencing_token, self.lease_seconds)
                job.lease_expires_at = answer["lease_expires_at"]
            except LeaseLost:
                job.lease_lost.set()
                return
            except (OrreryError, OSError) as e:
                # Transient: the next beat may get through before the lease ends.
                print(f"orrery_worker: heartbeat of job {job.id} failed: {e}", file=sys.stderr, flush=True)

    def run_job(self, job):
        done = threading.Event()
        beat = None
        if self.heartbeat_seconds and self.heartbeat_seconds > 0:
            beat = threading.Thread(target=self._heartbeat, args=(job, done), daemon=True)
            beat.start()
        try:
            try:
                output = self.handler(job)
            except PermanentError as e:
                return self._settle(job, "failed", lambda: self.client.fail(
                    job.id, job.fencing_token, f"{e}", retryable=False))
            except Exception as e:  # noqa: BLE001 - any handler failure is the job's failure
                return self._settle(job, "failed", lambda: self.client.fail(
                    job.id, job.fencing_token, f"{type(e).__name__}: {e}", retryable=True))
            return self._settle(job, "completed", lambda: self.client.complete(job.id, job.fencing_token, output))
        finally:
            done.set()
            if beat is not None:
                beat.join()

    def _settle(self, job, outcome, call):
        try:
            answer = call()
        except LeaseLost as e:
            # Another worker holds the job now (or it is gone): this result must not count.
            self.on_result(job, "discarded", {"status": e.status, "error": e.body})
            return "discarded"
        self.on_result(job, outcome, answer)
        return outcome


def load_handler(spec):
    """`module:function` → the function (the module is imported from the current directory or PYTHONPATH)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--handler must be module:function, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def main(argv=None):
    # Run as a script, this module is __main__: handlers that `import orrery_worker` must get these very classes
    # (PermanentError above all), not a second copy.
    sys.modules.setdefault("orrery_worker", sys.modules[__name__])
    p = argparse.ArgumentParser(description="Run Orrery external jobs with a Python function.")
    p.add_argument("--url", default=os.environ.get("ORRERY_URL", "http://localhost:8080"))
    p.add_argument("--token", default=os.environ.get("ORRERY_TOKEN"), help="default: $ORRERY_TOKEN")
    p.add_argument("--queue", action="append", required=True, help="repeatable")
    p.add_argument("--handler", required=True, help="module:function called with each Job")
    p.add_argument("--client-id", default=None)
    p.add_argument("--max-jobs", type=int, default=1)
    p.add_argument("--wait-seconds", type=int, default=20)
    p.add_argument("--lease-seconds", type=int, default=60)
    p.add_argument("--heartbeat-seconds", type=float, default=None, help="default lease/3; 0 = no heartbeats")
    p.add_argument("--once", action="store_true", help="one claim, then exit")
    p.add_argument("--until-empty", action="store_true", help="exit when a claim finds no job")
    p.add_argument("--quiet", action="store_true", help="no JSON line per job on stdout")
    args = p.parse_args(argv)
    if not args.token:
        raise SystemExit("no token: pass --token or set ORRERY_TOKEN (an agent with the jobs:work scope)")

    def report(job, outcome, detail):
        if args.quiet:
            return
        print(json.dumps({"job_id": job.id, "attempt": job.attempt, "outcome": outcome, "detail": detail}),
              flush=True)

    worker = Worker(args.url, args.token, args.queue, load_handler(args.handler), client_id=args.client_id,
                    max_jobs=args.max_jobs, wait_seconds=args.wait_seconds, lease_seconds=args.lease_seconds,
                    heartbeat_seconds=args.heartbeat_seconds, on_result=report)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    if args.once:
        worker.run_once()
    else:
        worker.run_forever(until_empty=args.until_empty)


if __name__ == "__main__":
    main()
