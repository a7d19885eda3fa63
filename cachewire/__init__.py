"""cachewire: cache-invalidation propagation.

`cachewire.hub` is the push hub, `cachewire.sidecar` the per-pod agent (and
`cachewire.sidecar.client` the app-side library), `cachewire.v1` the generated gRPC stubs,
and `cachewire.common` what the hub and the sidecar share (settings helpers, logs,
telemetry). The command line is `cachewire` (`cachewire.cli`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cachewire")
except PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"
