"""The README's settings reference, rendered from a settings table (the product's; the lab passes its own too)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.inventory.settings import HOST_SCOPES, SETTINGS, Scope, Setting

_SECTION_TITLES = {
    Scope.TOP: "",
    Scope.LAB: "lab.",
    Scope.SHARE: "share.",
    Scope.BACKUP: "backup.",
    Scope.SIGNING: "signing.",
    Scope.CREDENTIAL: "credential.",
    Scope.HOST_LAB: "lab.",
}


def _default_text(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.required:
        return "required"
    if setting.default is None:
        return "none"
    if isinstance(setting.default, bool):
        return str(setting.default).lower()
    if setting.default == ():
        return "[]"
    return f"`{setting.default}`" if setting.default != "" else '""'


def settings_reference_markdown(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's settings reference, rendered from the schema (the lab adds its own settings to it)."""
    lines = [
        "| Setting | Where | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    seen: set[tuple[str, Scope]] = set()
    for setting in settings:
        scope = setting.scopes[0]
        if (setting.name, scope) in seen:
            continue
        seen.add((setting.name, scope))
        if scope in HOST_SCOPES and scope is not Scope.GROUP:
            where, prefix = "defaults, group, host", ""
        elif scope is Scope.GROUP:
            where, prefix = "group", ""
        elif scope is Scope.HOST_LAB:
            where, prefix = "defaults, group, host", "lab."
        elif scope is Scope.CREDENTIAL:
            where, prefix = "share, defaults, group, host", "credential."
        else:
            where, prefix = "top level" if scope is Scope.TOP else scope.value, _SECTION_TITLES[scope]
        kind = setting.kind.value
        if setting.choices:
            kind = " \\| ".join(f"`{c}`" for c in setting.choices)
        description = setting.description.replace("|", "\\|")
        default = _default_text(setting)
        lines.append(f"| `{prefix}{setting.name}` | {where} | {kind} | {default} | {description} |")
    lines.append("")
    lines.append(
        "Durations: `30d`, `12h`, `90m`, `45s`, `0s` or a number of seconds. Secret references: "
        "`env:NAME`, `file:PATH` (mode 0600), `prompt`, `command:ARGV...` (no shell; `KEYFLEET_*` variables "
        "are not passed on), `vault:FILE#key`; any other string in a secret position is plaintext, allowed "
        "only in a lab inventory whose hosts (and smb share server) all have loopback addresses "
        "(127.0.0.0/8). Top-level keys "
        "starting with `x-` are ignored (a place for YAML anchors); `<<` merge keys work."
    )
    return "\n".join(lines) + "\n"
