"""segedge edge agent: OpenVINO segmentation on a camera stream, results over MQTT."""

# The one version source: pyproject.toml reads it (dynamic version), every command's
# --version and the published status show it. Bump it with a CHANGELOG.md entry.
__version__ = "0.1.0"
