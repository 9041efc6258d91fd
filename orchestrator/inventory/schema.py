"""The one inventory schema: every setting with its type, default, scopes and description.

The schema lives in three modules, re-exported here so callers need only this one:
``inventory.values`` (value checkers and durations), ``inventory.settings`` (the settings table)
and ``inventory.reference`` (the README's settings reference, rendered from the table). The keys
of the two ``lab:`` mappings are the lab plug-in's own (``orchestrator.lab.settings``).
"""

from __future__ import annotations

from orchestrator.inventory.reference import settings_reference_markdown
from orchestrator.inventory.settings import (
    HOST_SCOPES,
    LAB_CA,
    ROLES,
    SCHEMES,
    SETTINGS,
    TRANSPORTS,
    UNENCRYPTED_TRANSPORTS,
    Kind,
    Scope,
    Setting,
    settings_for,
)
from orchestrator.inventory.values import (
    LOOPBACK,
    MAX_DURATION,
    Invalid,
    check_address,
    check_dns_name,
    check_file,
    check_group_name,
    check_not_empty,
    check_port,
    check_positive,
    check_public_key,
    check_retries,
    check_thumbprint,
    is_loopback,
    parse_duration,
)

__all__ = [
    "HOST_SCOPES",
    "LAB_CA",
    "LOOPBACK",
    "MAX_DURATION",
    "ROLES",
    "SCHEMES",
    "SETTINGS",
    "TRANSPORTS",
    "UNENCRYPTED_TRANSPORTS",
    "Invalid",
    "Kind",
    "Scope",
    "Setting",
    "check_address",
    "check_dns_name",
    "check_file",
    "check_group_name",
    "check_not_empty",
    "check_port",
    "check_positive",
    "check_public_key",
    "check_retries",
    "check_thumbprint",
    "is_loopback",
    "parse_duration",
    "settings_for",
    "settings_reference_markdown",
]
