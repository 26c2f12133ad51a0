"""Shared building blocks of every Regatta service. A library: imported, never run."""
