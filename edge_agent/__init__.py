"""segedge edge agent: OpenVINO segmentation on a camera stream, results over MQTT."""

__version__ = "0.1.0"
