"""Video curation: a shared SQL catalog driving ingest -> split -> dedup -> filters -> caption
-> encode.

``catalog`` holds the tables (SQLite by default, PostgreSQL by URL), ``claims`` hands tasks to
workers with expiring leases, ``ingest`` probes files, ``scenes`` cuts them into scenes in one
streaming pass, ``phash`` finds near-duplicates, ``filters`` rejects bad scenes cheapest first,
``captions`` and ``encode``/``shards`` caption scenes and pre-encode them for training,
``stages`` and ``runner`` run it all in worker processes. Nothing heavy is imported here:
import the module you need.
"""
