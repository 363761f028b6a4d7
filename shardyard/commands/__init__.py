"""Command-line commands, one module per group; `shardyard.cli` puts them together."""
