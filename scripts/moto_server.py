"""moto's server with DynamoDB's per-request atomicity and SQS's dead-letter redrive.

DynamoDB applies each write, its condition included, atomically: that is what Herald's
conditional claims and counters (the SMS rate cap, idempotency records) rely on. moto's
threaded server runs requests in parallel and evaluates a condition and applies the update
as separate steps, so two concurrent conditional updates can both pass. One lock around
the DynamoDB backend's item operations gives the stand-in the guarantee the real service
has.

moto does not implement SQS's message move tasks (StartMessageMoveTask,
ListMessageMoveTasks), which Herald's dead-letter redrive calls. They are added here with
the rules the SQS API Reference gives them ("StartMessageMoveTask"): the source must be the
dead-letter queue of another queue; only one task runs per source queue at a time;
MaxNumberOfMessagesPerSecond is 1 to 500; the move is asynchronous (the call answers
with a task handle and the messages move afterwards). A task moves the messages that are
visible when it starts, as SQS does ("ApproximateNumberOfMessagesToMove"). One deviation,
stricter than SQS: without a DestinationArn SQS returns each message to its own source
queue, which moto does not record; here that is allowed only when the DLQ has one source.
Everything else in moto is left as it is.
"""

import functools
import sys
import threading
import time
import uuid

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.dynamodb.models import DynamoDBBackend
from moto.server import main
from moto.sqs.exceptions import InvalidParameterValue
from moto.sqs.responses import SQSResponse

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


class ResourceNotFound(ServiceException):
    def __init__(self, message):
        super().__init__("ResourceNotFoundException", message)


class UnsupportedOperation(ServiceException):
    def __init__(self, message):
        super().__init__("UnsupportedOperation", message)


_move_tasks = {}  # source ARN -> its tasks, newest first
_move_lock = threading.Lock()


def _queue_by_arn(backend, arn):
    for queue in backend.queues.values():
        if queue.queue_arn == arn:
            return queue
    raise ResourceNotFound(f"The resource that you specified for the SourceArn parameter doesn't exist: {arn}")


def _move(backend, task, source, destination, rate):
    for _ in range(task["ApproximateNumberOfMessagesToMove"]):
        messages = backend.receive_message(source.name, 1, 0, 30)
        if not messages:
            break
        message = messages[0]
        backend.send_message(
            destination.name, message.body, message_attributes=message.message_attributes
        )
        backend.delete_message(source.name, message.receipt_handle)
        task["ApproximateNumberOfMessagesMoved"] += 1
        if rate:
            time.sleep(1 / rate)
    task["Status"] = "COMPLETED"


def start_message_move_task(self):
    backend = self.sqs_backend
    source = _queue_by_arn(backend, self._get_param("SourceArn"))
    sources = [q for q in backend.queues.values() if q.dead_letter_queue is source]
    if not sources:
        raise InvalidParameterValue("Source queue must be configured as a Dead Letter Queue.")
    rate = self._get_param("MaxNumberOfMessagesPerSecond")
    if rate is not None and not 1 <= int(rate) <= 500:
        raise InvalidParameterValue("MaxNumberOfMessagesPerSecond must be between 1 and 500.")
    destination_arn = self._get_param("DestinationArn")
    if destination_arn:
        destination = _queue_by_arn(backend, destination_arn)
    elif len(sources) == 1:
        destination = sources[0]
    else:
        raise InvalidParameterValue(
            "DestinationArn is required here: this stand-in does not record each message's source queue."
        )
    with _move_lock:
        tasks = _move_tasks.setdefault(source.queue_arn, [])
        if any(t["Status"] == "RUNNING" for t in tasks):
            raise UnsupportedOperation(
                "There is already a task running. Only one active task is allowed for a source queue arn at a given time."
            )
        task = {
            "TaskHandle": uuid.uuid4().hex,
            "Status": "RUNNING",
            "SourceArn": source.queue_arn,
            "DestinationArn": destination.queue_arn,
            "ApproximateNumberOfMessagesMoved": 0,
            "ApproximateNumberOfMessagesToMove": len(source.messages),
            "StartedTimestamp": int(time.time() * 1000),
        }
        if rate is not None:
            task["MaxNumberOfMessagesPerSecond"] = int(rate)
        tasks.insert(0, task)
    threading.Thread(
        target=_move, args=(backend, task, source, destination, int(rate or 0)), daemon=True
    ).start()
    return ActionResult({"TaskHandle": task["TaskHandle"]})


def list_message_move_tasks(self):
    source = _queue_by_arn(self.sqs_backend, self._get_param("SourceArn"))
    limit = int(self._get_param("MaxResults") or 1)
    if not 1 <= limit <= 10:
        raise InvalidParameterValue("MaxResults must be between 1 and 10.")
    with _move_lock:
        tasks = [dict(t) for t in _move_tasks.get(source.queue_arn, [])[:limit]]
    for task in tasks:
        if task["Status"] != "RUNNING":
            task.pop("TaskHandle")  # SQS gives the handle of a running task only
    return ActionResult({"Results": tasks})


SQSResponse.start_message_move_task = start_message_move_task
SQSResponse.list_message_move_tasks = list_message_move_tasks


if __name__ == "__main__":
    sys.exit(main())
