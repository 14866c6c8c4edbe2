"""Bytes on the wire: upstream connections and their pools, request targets, WebSockets, route matchers.

Knows no manager and no config: the data path's lowest floor."""
