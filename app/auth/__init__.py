"""Bearer tokens with scopes, stored as sha256 hashes."""
