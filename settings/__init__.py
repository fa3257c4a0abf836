"""Per-environment settings: shared defaults, one module per environment, loading and validation."""

from settings.base import Settings
from settings.loader import ENV_VARIABLES, ENVIRONMENTS, SettingsError, key_version, load_settings

__all__ = ["ENVIRONMENTS", "ENV_VARIABLES", "Settings", "SettingsError", "key_version", "load_settings"]
