"""What every process of the server imports: the wire messages, the settings, the model spec, the steer
option, the stats records and their Prometheus rendering. No torch, no FastAPI."""
