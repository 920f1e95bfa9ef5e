"""Merxios ERP-Sync."""

__version__ = "0.1.0"
