"""LaunchDarkly: the REST client, where each instruction goes, rate limits, retries, the sender,
big segments, and reading state back.
"""
