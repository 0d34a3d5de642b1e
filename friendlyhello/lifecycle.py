"""What the probes report of the process itself, apart from Redis: whether it is shutting
down, and whether each thread it needs still runs."""


class Lifecycle:
    """What the probes report of the process: whether it is shutting down (set by the server),
    and whether each thread that serving needs still runs."""

    def __init__(self):
        self.shutting_down = False
        self._threads = []  # (name, is_alive)

    def needs(self, name, is_alive):
        self._threads.append((name, is_alive))

    def dead_threads(self):
        return [name for name, is_alive in self._threads if not is_alive()]
