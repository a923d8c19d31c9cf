"""The catalog of losses, students and schemes, served from worker/engine/catalog.py (torch-free)."""
