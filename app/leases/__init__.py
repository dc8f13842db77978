"""Time-limited leases in the database: who runs a job, and who may write a lineage."""
