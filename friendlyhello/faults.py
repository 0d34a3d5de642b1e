"""Faults a learner or a platform tester turns on, to see what an orchestrator does about them:
page errors at a rate, added latency, readiness or liveness failing, and (from the admin port
only) a hang: the port accepts and reads but answers nothing.

They are set at start-up (FAULT_ERRORS, FAULT_ERROR_STATUS, FAULT_LATENCY, FAULT_READY,
FAULT_LIVE) and changed at run time on the admin port (admin.py). The state is one immutable
FaultState, replaced whole, so the serving thread never sees half a change. With WORKERS the
supervisor holds the admin port and writes the state to memory the workers share; each worker
reads it every sweep of its loop. Every fault that is on shows: in the JSON answer, in
/replicas, as friendlyhello_fault in /metrics, and in a log line when it is turned on or off.
"""

import random
import typing

MAX_LATENCY = 30.0  # seconds a page may be held at most


def latency_range(text):
    """FAULT_LATENCY: seconds, or a range LOW-HIGH, each from 0 to MAX_LATENCY."""
    low, dash, high = text.partition("-")
    try:
        bounds = (float(low), float(high if dash else low))
    except ValueError:
        bounds = (-1.0, -1.0)
    if not (0 <= bounds[0] <= bounds[1] <= MAX_LATENCY):
        raise ValueError(f"seconds from 0 to {MAX_LATENCY:g}, or a range such as 0.1-0.5")
    return bounds


def error_rate(text):
    """FAULT_ERRORS: a share of page requests from 0 to 1."""
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise ValueError("a rate from 0 to 1, such as 0.1 for one page in ten")
    return rate


class FaultState(typing.NamedTuple):
    """Every fault at one moment."""

    error_rate: float        # the share of pages failing, 0 to 1
    error_status: int        # the status they get
    latency: tuple           # (low, high) seconds added to each page
    ready_fails: bool
    live_fails: bool
    hangs: bool              # the main port answers nothing

    @classmethod
    def from_config(cls, config):
        return cls(config.fault_errors, config.fault_error_status, tuple(config.fault_latency),
                   config.fault_ready == "fail", config.fault_live == "fail", False)

    def cleared(self):
        """Every fault off (the error status kept, for the next rate)."""
        return FaultState(0.0, self.error_status, (0.0, 0.0), False, False, False)

    def as_json(self):
        """The whole state, for the admin port: each fault, on or off."""
        return {"errors": {"rate": self.error_rate, "status": self.error_status},
                "latency": {"seconds": list(self.latency)},
                "ready": "fail" if self.ready_fails else "ok",
                "live": "fail" if self.live_fails else "ok",
                "hang": "on" if self.hangs else "off"}

    def on(self):
        """The faults that are on, as {name: what}: {} when none."""
        on = {}
        if self.error_rate:
            on["errors"] = {"rate": self.error_rate, "status": self.error_status}
        if self.latency[1]:
            on["latency"] = {"seconds": list(self.latency)}
        if self.ready_fails:
            on["ready"] = "fail"
        if self.live_fails:
            on["live"] = "fail"
        if self.hangs:
            on["hang"] = "on"
        return on

    def words(self):
        """The faults on, in a few words for logs and /replicas ("" when none)."""
        parts = []
        if self.error_rate:
            parts.append(f"errors {self.error_rate:.0%} ({self.error_status})")
        if self.latency[1]:
            low, high = self.latency
            parts.append(f"latency {low:g} s" if low == high else f"latency {low:g}-{high:g} s")
        if self.ready_fails:
            parts.append("readiness fails")
        if self.live_fails:
            parts.append("liveness fails")
        if self.hangs:
            parts.append("hangs")
        return ", ".join(parts)

    def gauges(self):
        """friendlyhello_fault's samples: kind -> value (a rate, seconds, or 1 for on)."""
        return {"errors": self.error_rate, "latency": self.latency[1],
                "ready": int(self.ready_fails), "live": int(self.live_fails),
                "hang": int(self.hangs)}


class Faults:
    """The faults on in this process (``state``, a FaultState), and the decisions they make per
    request. ``shared``: with workers, memory that the supervisor's Faults writes each new
    state to (``set``) and each worker's reads (``refresh``)."""

    def __init__(self, config, chance=random.random, shared=None):
        self.state = FaultState.from_config(config)
        self._chance, self.shared = chance, shared
        self.refresh()  # a worker started (or replaced) later takes what is on now

    def set(self, state):
        """Take a new state whole (from the admin port's thread: one assignment)."""
        self.state = state
        if self.shared is not None:
            self.shared.write(0, tuple(state))

    def refresh(self):
        """In a worker: take the state the supervisor last wrote. True when it changed."""
        written = self.shared.read(0) if self.shared is not None else None
        if written is None or tuple(self.state) == written:
            return False
        self.state = FaultState(*written)
        return True

    def page_error(self):
        """The status to answer a page with instead of counting it, or None."""
        state = self.state
        if state.error_rate and self._chance() < state.error_rate:
            return state.error_status
        return None

    def page_delay(self):
        """Seconds to hold a page's answer (0: none)."""
        low, high = self.state.latency
        return low + (high - low) * self._chance() if high else 0.0
