"""Video curation: a shared SQL catalog driving ingest -> split -> dedup -> filters -> caption
-> encode.

``catalog`` holds the tables (SQLite by default, PostgreSQL by URL), ``claims`` hands tasks to
workers with expiring leases, ``ingest`` probes files, ``scenes`` cuts them into scenes in one
streaming pass, ``phash`` hashes frames and ``framehash`` finds near-duplicate scenes from 5
frame hashes each, ``filters`` rejects bad scenes cheapest first (thresholds and their
reasons in ``thresholds.yaml``; text boxes from ``textdet``), ``captions`` and
``encode``/``shards`` caption scenes and pre-encode them for training, ``stages`` and ``runner``
run it all in worker processes, ``sheets`` draws contact sheets of kept and rejected scenes.
Nothing heavy is imported here: import the module you need.
"""
