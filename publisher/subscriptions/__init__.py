"""Subscriptions: who may receive mail, and how people join and leave.

``fields`` checks what people type (address, name, time zone); ``links`` is the double opt-in
the web service runs (sign-up, confirmation, unsubscribe links, purge of stale sign-ups);
``csvfiles`` reads, imports and exports subscriber lists for the command line. The statements
that store the outcome are the ledger's (:mod:`publisher.ledger.subscribers`). Nothing is
imported here, so that the ledger may use ``fields`` without loading the rest.
"""
