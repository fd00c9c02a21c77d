"""The store: records and vocabularies (records.py, vocabulary.py), the contract every backend
implements (contract.py), the backends (sqlite/) and the factory that opens the one the
settings name (factory.py). Backends persist and query only; what is derived from spans
(hops, flows, aggregates) is computed in collectors/flows, once for every backend."""
