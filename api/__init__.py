"""The HTTP API: ``ppssl api --index DIR`` serves an index to other programs (FastAPI + uvicorn; docs/api.md).

``api.service`` is the API without HTTP (snapshot of the index, batched embedding and search, transactional
writes), ``api.batcher`` the dynamic batching, ``api.app`` the routes and error statuses, ``api.cli`` the command.
Like ``ui/``, it builds on ``engine/`` and ``indexer/`` only.
"""
