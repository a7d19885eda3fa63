"""Resource sampling for the soak test: RSS and open file descriptors of a process, and the
growth slope after warm-up (least squares), judged against stated limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# The stated limits, after warm-up: growth faster than this is a leak.
RSS_SLOPE_LIMIT = 32 * 2**20  # bytes per hour (32 MiB/h) …
RSS_NOISE = 8 * 2**20  # … and only when the fitted growth over the run exceeds 8 MiB
FD_GROWTH_LIMIT = 4  # descriptors more at the end than at the end of warm-up


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two points)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


@dataclass
class Samples:
    name: str
    pid: int
    rss: list[tuple[float, float]] = field(default_factory=list)
    fds: list[tuple[float, float]] = field(default_factory=list)

    def take(self, t: float) -> None:
        self.rss.append((t, float(rss_bytes(self.pid))))
        self.fds.append((t, float(open_fds(self.pid))))

    def verdict(self) -> tuple[str, list[str]]:
        """A report line, and the limits this process broke (none: it is flat)."""
        per_s = slope(self.rss)
        span = self.rss[-1][0] - self.rss[0][0] if self.rss else 0.0
        grown = per_s * span
        fd_growth = self.fds[-1][1] - self.fds[0][1] if self.fds else 0.0
        broken = []
        if per_s * 3600 > RSS_SLOPE_LIMIT and grown > RSS_NOISE:
            broken.append(f"{self.name}: RSS grows {per_s * 3600 / 2**20:.1f} MiB/h")
        if fd_growth > FD_GROWTH_LIMIT:
            broken.append(f"{self.name}: {fd_growth:.0f} more open file descriptors")
        line = (
            f"| {self.name} | {self.rss[0][1] / 2**20:.1f} | {self.rss[-1][1] / 2**20:.1f} "
            f"| {per_s * 3600 / 2**20:+.1f} | {self.fds[0][1]:.0f} | {self.fds[-1][1]:.0f} |"
        )
        return line, broken


HEADER = (
    "| process | RSS after warm-up MiB | RSS at end MiB | RSS slope MiB/h | fds after warm-up "
    "| fds at end |\n| --- | --- | --- | --- | --- | --- |"
)
