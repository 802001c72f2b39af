"""The core of flashsale: settings, connections, Lua admission, key schema, errors, metrics.

Nothing here imports any other package of the project.
"""
