"""The demo kit: `ld-targeting-consumer demo` (run.py), its sample events (samples.py) and the
embedded Kafka-protocol broker it starts (tansu.py, also used by `broker` and the tests).

Kept apart from the service so that `ls consumer/` shows the service and the operator
commands; nothing here is needed to run the service against a real Kafka.
"""
