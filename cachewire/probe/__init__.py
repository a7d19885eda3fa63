"""The consistency prober: canary invalidations through the same path as an app's.

Every round it writes a canary key into each probed cache, publishes the canary's
invalidation to the hub (gRPC `Publish`, like any app) on a topic the guarding sidecar
subscribes to, and watches how long the canary takes to disappear. The figures answer
"how often did the staleness bound hold" in production, independent of the pipeline's own
bookkeeping (Meta's Polaris reports the same "nines within T").

- `core`: outcome accounting and the Prometheus metrics (no I/O);
- `caches`: writing and looking up a canary in memcached and Redis;
- `prober`: the round loop.

Run it inside the sidecar (`cachewire sidecar --probe-interval 10`) or on its own
(`cachewire probe`).
"""
