"""Federated training of reward models: Flower apps, strategies, robust aggregation."""
