"""The instance: a launched machine with its volumes, metadata, boot, grow pool and rehearsal."""
