"""The contributor engine: no Qt, no torch.

Modules: ``settings`` (declared settings, private JSON file), ``schedule`` (weekly window and
its timer), ``sensors`` (idle, power, temperature, CPU readings), ``policy`` (a pure
``decide`` of RUN / THROTTLE / SUSPEND), ``credentials`` (keys and tokens in the OS keychain
or an explicit private file). Import from those modules; this package imports nothing so
that importing one part does not pull in the others.
"""
