"""The service: its lifecycle, who owns which partition (leases, membership, handover), the
pipeline from records to outcomes, the API gate, health and metrics.
"""
