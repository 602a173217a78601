"""moto's server with DynamoDB's per-request atomicity.

DynamoDB applies each write, its condition included, atomically: that is what Herald's
conditional claims and counters (the SMS rate cap, idempotency records) rely on. moto's
threaded server runs requests in parallel and evaluates a condition and applies the update
as separate steps, so two concurrent conditional updates can both pass. One lock around
the DynamoDB backend's item operations gives the stand-in the guarantee the real service
has; everything else in moto is left as it is.
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_ITEM_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "transact_write_items",
    "execute_statement",
    "execute_transaction",
)
_lock = threading.RLock()


def _atomic(operation):
    @functools.wraps(operation)
    def locked(*args, **kwargs):
        with _lock:
            return operation(*args, **kwargs)

    return locked


for name in _ITEM_OPERATIONS:
    setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))

if __name__ == "__main__":
    sys.exit(main())
