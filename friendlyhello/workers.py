"""Several workers: a supervisor process that runs WORKERS serving processes on one port.

The supervisor binds the port (so a taken port stops the start before any fork), forks the
workers, replaces one that dies, and passes a stop on. Each worker is a whole serving process,
wired as a single one is (``start_worker(slot, listening)`` does it, in the worker, and calls
``listening()`` once its socket listens).
"""

import collections
import os
import select
import signal
import time

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
HELD_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}  # blocked in a new worker until it has handlers

class Supervisor:
    """Runs WORKERS processes on one port, each listening on a socket of its own (SO_REUSEPORT).

    A worker that dies is replaced (after a back-off that grows while they keep dying young),
    and the reason is logged. SIGTERM or SIGINT is passed on as SIGTERM to every worker, each of
    which shuts down as a single process does (readiness 503, the delay, the drain); it exits 0
    when all have. A second signal kills them at once. Workers watch for the supervisor's end.
    """

    def __init__(self, config, log, start_worker):
        self.config = config
        self.log = log
        self.start_worker = start_worker
        self._listening_r, self._listening_w = os.pipe()  # a byte from each worker that listens
        self.workers = {}       # pid -> slot
        self.started = {}       # slot -> when its worker started
        self.failures = collections.Counter()  # slot -> deaths in a row, each within a second
        self.stopping = False

    def run(self, started):
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.config.workers):
            self._start(slot)
        self._wait_until_listening(self.config.workers, deadline=time.monotonic() + 10)
        self.log.started(started)  # now true: every worker listens, and a stop asked for is ours
        while self.workers:
            pid, status = os.waitpid(-1, 0)
            slot = self.workers.pop(pid, None)
            if slot is None or self.stopping:
                continue
            lived = time.monotonic() - self.started[slot]
            self.failures[slot] = self.failures[slot] + 1 if lived < 1 else 0
            delay = min(0.1 * 2 ** self.failures[slot], 10.0) if self.failures[slot] else 0.0
            self.log.error("supervisor", f"worker {slot} (pid {pid}) {_ended(status)} after "
                                         f"{lived:.1f}s; starting another in {delay:.1f}s")
            time.sleep(delay)
            if not self.stopping:
                self._start(slot)
        return 0

    def _wait_until_listening(self, count, deadline):
        heard = 0
        while heard < count and (wait := deadline - time.monotonic()) > 0:
            if select.select([self._listening_r], [], [], wait)[0]:
                heard += len(os.read(self._listening_r, count - heard))

    def listening(self):
        """Said by a worker (in its own process) once its socket listens."""
        os.write(self._listening_w, b"x")

    def _start(self, slot):
        # Signals wait until the worker has its own handlers (serve() lets them through): a
        # SIGTERM passed on at once must not run the supervisor's handler in the worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                code = self.start_worker(slot, self.listening)
            finally:
                os._exit(code)
        self.workers[pid] = slot
        self.started[slot] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

    def pass_on(self, signum):
        for pid in list(self.workers):
            _kill(pid, signum)

    def crash(self, code):
        """The admin port's crash: every worker ends at once and the supervisor exits with
        ``code``, replacing none (the container exits, for its restart policy to act on)."""
        self.stopping = True
        for pid in list(self.workers):
            _kill(pid, signal.SIGKILL)
        os._exit(code)

    def _on_signal(self, signum, frame):
        if self.stopping:  # asked twice: end everything now
            for pid in self.workers:
                _kill(pid, signal.SIGKILL)
            os._exit(1)
        self.stopping = True
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)


def _ended(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
