"""Deployment with TensorFlow Serving: the SavedModel export (export.py), its warm-up records
(warmup.py) and a REST client (client.py). The serving contract is in export.py's docstring."""
