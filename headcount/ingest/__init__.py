"""Ingest: the MQTT wire format, decoding and validation of what DPUs publish."""
