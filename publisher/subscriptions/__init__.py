"""Subscriptions: who may receive mail (``fields``), joining and leaving (``links``), CSV files.

Nothing is imported here, so that the ledger may use ``fields`` without loading the rest.
"""
