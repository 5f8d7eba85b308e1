"""Bulk import of traversals from files (the DPU CSV export)."""

from headcount.importer.csvfile import CsvFormatError, read_csv
from headcount.importer.load import ImportSummary, import_csv

__all__ = ["CsvFormatError", "ImportSummary", "import_csv", "read_csv"]
