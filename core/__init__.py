"""Torch-free parts every side shares: settings, tables, storage, run config, catalog, pairing, job queue, signing."""
