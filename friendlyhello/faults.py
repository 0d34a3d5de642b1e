"""Faults a learner or a platform tester turns on, to see what an orchestrator does about them:
page errors at a rate, added latency, readiness or liveness failing. Set at start-up
(FAULT_ERRORS, FAULT_ERROR_STATUS, FAULT_LATENCY, FAULT_READY, FAULT_LIVE); each process holds
its own, and every fault that is on shows: in the JSON answer, in /replicas, as
friendlyhello_fault in /metrics, and in a log line at start-up.
"""

import random

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


class Faults:
    """The faults on in this process, and the decisions they make per request."""

    def __init__(self, config, chance=random.random):
        self.error_rate, self.error_status = config.fault_errors, config.fault_error_status
        self.latency = config.fault_latency
        self.ready_fails, self.live_fails = config.fault_ready == "fail", config.fault_live == "fail"
        self._chance = chance

    def page_error(self):
        """The status to answer a page with instead of counting it, or None."""
        if self.error_rate and self._chance() < self.error_rate:
            return self.error_status
        return None

    def page_delay(self):
        """Seconds to hold a page's answer (0: none)."""
        low, high = self.latency
        return low + (high - low) * self._chance() if high else 0.0

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
        return ", ".join(parts)

    def gauges(self):
        """friendlyhello_fault's samples: kind -> value (a rate, seconds, or 1 for on)."""
        return {"errors": self.error_rate, "latency": self.latency[1], "ready": int(self.ready_fails),
                "live": int(self.live_fails)}
