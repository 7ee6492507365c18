"""Local AWS: moto's server (`moto_server`, same arguments), with its DynamoDB Query
reading only the partition asked for.

moto 5.2.5 answers a Query of a table (not of an index) by listing and sorting every item
of the table, then keeping those of the partition. Its cost grows with the whole table:
in the aggregation benchmark a Query of one user's few items took 15 ms once the table
held a few hundred items of other users, and every local run slows down as its tables
fill. DynamoDB reads the partition only. Here moto's Query gets the items of the asked
partition instead of the table's (the same items it would have kept), so it costs what
the partition holds. Everything else, and what every request answers, is moto's own.

Used wherever the project starts moto (scripts/local-aws.sh, scripts/bench-moto.sh,
scripts/fuzz.sh, scripts/test-web.sh):
`.venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p 4566`.
"""

import sys
import threading

from moto.dynamodb.models.table import Table
from moto.server import main

_local = threading.local()
_all_items = Table.all_items
_query = Table.query


def _partition_items(self):
    partition = getattr(_local, "partition", None)
    if partition is not None and partition[0] is self:
        return sorted(partition[1], key=lambda item: item.range_key)
    return _all_items(self)


def _query_partition(self, hash_key, *args, **kwargs):
    index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
    if index_name or not self.range_key_attr or hash_key is None:
        return _query(self, hash_key, *args, **kwargs)
    # `get`, not `[]`: `items` is a defaultdict, and a read must not add a partition.
    _local.partition = (self, list(self.items.get(hash_key, {}).values()))
    try:
        return _query(self, hash_key, *args, **kwargs)
    finally:
        _local.partition = None


Table.all_items = _partition_items
Table.query = _query_partition

if __name__ == "__main__":
    sys.exit(main())
