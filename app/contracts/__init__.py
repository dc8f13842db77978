"""Data contracts shared by the API (`app/`) and the workers, importable without torch."""
