"""Shared building blocks of every Regatta service; services/common/README.md maps them."""
