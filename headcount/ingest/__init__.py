"""Ingest: from what DPUs publish over MQTT to stored, routed events.

Its public modules, each imported on its own so that the pure wire format costs no MQTT
client or database: ``wire`` (the wire format, decoding and screening; pure), ``mqtt`` (the
persistent, hand-acknowledged subscription), ``pipeline`` (decode, group commit, route, ack),
``health`` (how ingest is doing, for ``/healthz``), ``ratelimit`` (per-DPU rate limits, the
quarantine budget), ``dpus`` (what each DPU last reported), ``loss`` (DPUs' delivery reports
against the store), ``broker`` (the embedded amqtt broker), ``tls`` (certificates and trust
for MQTT over TLS).
"""

__all__ = ["broker", "dpus", "health", "loss", "mqtt", "pipeline", "ratelimit", "tls", "wire"]
