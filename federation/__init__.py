"""Federated training of reward models: Flower apps, strategies, robust aggregation.

    aggregation.py  pure numpy rules: FedAvg, coordinate median, trimmed mean, (Multi-)Krum, clipping, DP
    codec.py        canonical bytes (and SHA-256) of named float32 arrays
    agreement.py    the signed federation agreement (members, base model, strategy, rounds, DP)
    contribution.py signed contributions and the coordinator's check of each (reason codes)
    manifest.py     signed round manifests chained round to round; offline chain verification
    rounds.py       coordinator state: verify -> aggregate -> sign, or BelowQuorum
    apps.py         Flower 1.41 Message-API ServerApp loop and ClientApp handlers
    local_grid.py   an in-process Flower Grid (tests, simulation without Ray)
    worker.py       warm member-side trainer behind a thin relay ClientApp
    tls.py          the federation's CA and SuperLink certificate
    deployment.py   SuperLink / SuperNode processes, `flwr run`
"""
