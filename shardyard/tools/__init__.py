"""Tools that act on a finished store: `verify` (and `--repair`), `edit` (delete, split, merge, features),
`recode`, `upgrade`, `export lerobot`, `view` and `inspect`. Only `shardyard.commands` imports them; they
import `stores`, `loaders` and `ingest`, never the other way."""

__all__: list[str] = []
