"""Bulk import of traversals from files (the DPU CSV export)."""
