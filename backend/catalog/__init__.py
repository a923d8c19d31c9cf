"""The catalog of losses, students and schemes, served from core/catalog/__init__.py (torch-free)."""
