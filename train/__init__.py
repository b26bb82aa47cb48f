"""SAE training: the train step, mesh and sharding, activation streaming and caching, metrics."""
