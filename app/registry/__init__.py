"""Model versions with lineage, aliases with append-only history, and cached suite scores."""
