"""The `distill-studio` command: `main.app` (the composition root) and `remote` (REST commands)."""
