"""ERP connectors: typed config and a cursor go in, pages of records come out.

Connectors know nothing of the database, the settings or the queue; they are found
through the entry-point group ``erp_sync.connectors`` (see registry.py).
"""
