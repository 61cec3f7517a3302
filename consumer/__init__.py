"""ld-targeting-consumer: Kafka targeting-change events applied to LaunchDarkly."""

__version__ = "0.1.0"
