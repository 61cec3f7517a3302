"""Kafka: client factories, admin and reading helpers, and the brokers the demo and the tests start
(Tansu, Apache Kafka).
"""
