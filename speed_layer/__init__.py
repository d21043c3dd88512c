"""Speed layer: Kafka -> fresh hourly realtime views, raw archive and dead-letter topic."""
