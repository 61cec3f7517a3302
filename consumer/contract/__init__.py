"""The outside contract: the input event, the outcome and its headers, dead letters, the JSON
Schemas.
"""
