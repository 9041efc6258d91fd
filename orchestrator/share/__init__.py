"""The backup share: layout, backends (local path, SMB), signed manifest, run records and the store."""
