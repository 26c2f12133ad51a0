"""The heroes service: heroes with a write-only secret identity."""
