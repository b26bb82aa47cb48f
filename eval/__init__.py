"""Unlearning evaluation: ConceptWorld, metrics, judges, the PyTorch VLM bridge, baselines, experiments."""
