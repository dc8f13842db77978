"""Aliases: named pointers at model versions (production, staging), moved by compare-and-set, with
an append-only history."""
