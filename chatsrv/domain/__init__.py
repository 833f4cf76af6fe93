"""The domain: entities, errors, ports and pure state machines. No I/O, no Trio."""
