"""What the service tells others as counts change: each space's state over MQTT (retained,
throttled; Home Assistant discovery), capacity alerts over MQTT and to signed webhooks."""
