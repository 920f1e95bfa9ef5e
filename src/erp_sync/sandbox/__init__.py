"""Sandbox ERP servers: local stand-ins that speak each ERP's HTTP dialect.

They let connectors be developed, tested and benchmarked with no internet and with
faults on demand. `common` holds what every dialect shares (data, faults, limits,
mutations, truth); one module per ERP renders that data in the ERP's own shape.
"""
