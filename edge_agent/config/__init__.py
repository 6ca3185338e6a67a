"""Typed agent configuration: one TOML file, every key overridable from the environment.

``SEGEDGE_<SECTION>_<KEY>`` overrides ``[section] key``; ``SEGEDGE_<KEY>`` overrides a
top-level key. Everything is checked at start; a problem raises ConfigError naming
the key, and the CLI turns it into exit code 78 (EX_CONFIG). See docs/config.md.

Rooms: ``settings`` (the dataclasses), ``loader`` (file, environment, secrets),
``checks`` (values and cross-key rules), ``keys`` (the docs' key table), ``preflight``
(``--check-config`` beyond the file: devices, ``--probe``).
"""

from __future__ import annotations

from edge_agent.config.checks import (  # noqa: F401 - the package's API
    frames_in_topic,
    metrics_address,
    source_kind,
    state_file,
    validate,
)
from edge_agent.config.keys import (  # noqa: F401 - the package's API
    describe,
    key_table,
)
from edge_agent.config.loader import (  # noqa: F401 - the package's API
    load,
)
from edge_agent.config.settings import (  # noqa: F401 - the package's API
    CAMERA_OUTPUT_KEYS,
    CAMERA_SAMPLES_KEYS,
    CAMERA_SOURCE_KEYS,
    DEFAULT_PATH,
    DEVICE_NAME,
    ENV_IGNORED,
    ENV_PREFIX,
    ID_PATTERN,
    ID_RULE,
    LOG_LEVELS,
    MAX_CAMERAS,
    MAX_CONFIG_BYTES,
    MAX_PASSWORD_BYTES,
    MAX_STRING,
    NETWORK_SCHEMES,
    PATH_KEYS,
    PRECISIONS,
    SECRETS,
    SECTIONS,
    TABLE_LISTS,
    VIRTUAL_DEVICES,
    CameraConfig,
    CommandsConfig,
    Config,
    ConfigError,
    FramesInConfig,
    HomeAssistantConfig,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    OutputConfig,
    QualityConfig,
    SamplesConfig,
    SourceConfig,
    id_problem,
    valid_id,
)
