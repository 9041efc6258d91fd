"""The inventory: YAML schema, loader and host selection."""
