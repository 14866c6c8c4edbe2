"""The config: its schema, field types and units, interpolation and compose's options, validated once at load."""
