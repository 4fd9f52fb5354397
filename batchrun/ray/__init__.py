"""`--engine ray`: the same engine on a Ray cluster (an optional extra: batchrun[ray]).

Nothing about a row's life changes: each Ray worker runs batchrun's own Engine, built by the
same factory as the local runner's (factory.py), with its share of `--concurrency` and
`--max-pending`. What the job shares becomes a service (services.py), as DISTRIBUTED.md
recommends, and each worker talks to it through a proxy (proxies.py):

- the rate limit: one actor holds the RateWindow and grants start times;
- the checkpoint: one actor on the driver's node (SQLite must stay on one machine) owns the
  CheckpointWriter and the asset-id cache; workers ship lifecycle transitions every 100 ms,
  and a consume-once answer is committed before the worker goes on;
- the cost cap (`--max-cost`): one actor holds the budget; each request books its worst case.

Row events (`--log-json`) travel back with each batch's report and the driver writes them.
The driver (driver.py) reads the inputs and keeps the checkpoint exactly as the local runner
does, then streams the rows still to do to the workers (worker.py), resumed ids first.
"""
