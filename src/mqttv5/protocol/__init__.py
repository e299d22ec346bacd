"""The sans-I/O MQTT protocol core: packets, properties, reason codes, topics, connection state.

Nothing here performs I/O or reads the clock: bytes go in, packets and bytes come out, and every
time-dependent call takes ``now``.
"""
