"""The JSON Schemas of the bundle manifest and the MQTT messages, shipped as package data."""
