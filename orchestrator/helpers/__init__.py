"""The remote helpers: the PowerShell scripts keyfleet sends (package data) and their contract (remote)."""
