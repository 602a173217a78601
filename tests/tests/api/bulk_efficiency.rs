//! Bulk efficiency through the local runner: the structural bounds a bulk send must keep,
//! counted with the runner's SDK interceptor and the provider sandboxes (not timed).

use std::time::Duration;

use bench::bulk_efficiency;

use crate::helpers::{long_timeouts, spawn_bundle_with};

/// The organization the bulk SMS test sends as; the sandbox's number is its own.
const OWN_NUMBER_ORG: &str = "bulkowned";

/// Events per SQS message on the events queue (`shared::events::EVENTS_PER_MESSAGE`).
const EVENTS_PER_MESSAGE: u64 = shared::events::EVENTS_PER_MESSAGE as u64;

/// 1,001 recipients: two SendGrid calls, one of them a remainder of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_email_keeps_its_call_message_and_write_bounds() {
    let t = spawn_bundle_with(long_timeouts).await;
    let n: u64 = 1_001;
    let run = bulk_efficiency::bulk_email(
        &t.bundle,
        1_001,
        &bulk_efficiency::EmailShape::default(),
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    let table = run.table();
    println!("{table}"); // `-- --nocapture` shows the counts
    assert_eq!(run.statuses.get("delivered"), Some(&1_001), "{table}");

    // One SendGrid call carries up to 1,000 personalizations.
    let jobs = n.div_ceil(1_000);
    assert_eq!(run.provider_calls, jobs, "{table}");

    // SQS: one `email.bulk` message, one `email.send` message per 1,000 emails, and events.
    // Events per email: `queued` (API), `sent` (worker), and from the webhook its two logged
    // provider events (processed, delivered) plus one status change — at most 5, packed 100
    // to a message. Each publish call rounds up once: the API's (1, with its audit event),
    // the worker's two per job (the provider call, the `sent` changes) and the webhook's one
    // per posted batch (the sandbox posts at most 1,000 events, i.e. two batches per call).
    let queue = |logical_id: &str| {
        let name = t.bundle.resource(logical_id).rsplit('/').next().unwrap();
        run.sdk.messages_by_queue.get(name).copied().unwrap_or(0)
    };
    assert_eq!(queue("EmailBulkQueue"), 1, "{table}");
    assert_eq!(queue("EmailSendQueue"), jobs, "{table}");
    let events_bound = (5 * n).div_ceil(EVENTS_PER_MESSAGE) + 1 + 2 * jobs + 2 * jobs;
    assert!(
        queue("EventsQueue") <= events_bound,
        "{} event messages, bound {events_bound}\n{table}",
        queue("EventsQueue")
    );
    assert_eq!(
        run.sdk.sqs_messages_sent(),
        1 + jobs + queue("EventsQueue"),
        "{table}"
    );

    // DynamoDB item writes per email, from the code (issue 20 §5):
    // - the API writes the bulk's item and its shared body once each (PutItem) and each
    //   record once (BatchWriteItem, 25 items to a call) with its small varying parts
    //   inside and the send job it is enqueued in;
    // - the worker claims each job once (a PutItem on the job's item), not each email: the
    //   emails stay `queued` in their job until it records each one's outcome (one
    //   conditional UpdateItem); where the webhook got there first that write fails its
    //   condition and one more keeps the provider message id;
    // - the webhook applies the email's events of one batch (processed and delivered come
    //   in one batch here) with one conditional write, read again and written once more if
    //   the worker's outcome write changed the email after the webhook's read.
    // Only one of "outcome write failed" and "webhook write retried" can happen (whichever
    // wrote first, the other adapts), so each email takes 3 writes, 4 where the two race.
    let writes = run.sdk.dynamodb_items_written();
    let of_kind = |kind: &str| run.sdk.writes_by_item.get(kind).copied().unwrap_or(0);
    assert_eq!(of_kind("SENDJOB"), jobs, "one claim per send job\n{table}");
    assert!(
        (3 * n..=4 * n).contains(&of_kind("EMAIL")),
        "3 writes per email, 4 where the webhook races the worker\n{table}"
    );
    assert!(
        writes <= 4 * n + jobs + 2,
        "{writes} writes, bound {}\n{table}",
        4 * n + jobs + 2
    );
    assert_eq!(
        run.sdk.get("DynamoDB", "BatchWriteItem").items,
        n,
        "each record created once, its parts inside\n{table}"
    );
    assert_eq!(
        run.sdk.get("DynamoDB", "BatchWriteItem").calls,
        n.div_ceil(25),
        "{table}"
    );
    assert_eq!(
        run.sdk.get("DynamoDB", "PutItem").items,
        2 + jobs,
        "the bulk item and the shared body once each, a claim per send job\n{table}"
    );
}

/// Twilio takes one message per call, so a bulk SMS makes one call per recipient; the bulk
/// worker packs 25 SMS per send job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_sms_makes_one_twilio_call_per_message() {
    // The per-organization SMS rate (10/s by default) only paces the sends; a high rate
    // keeps the worker from deferring jobs, which would add SQS messages to the count.
    let t = spawn_bundle_with(|options| {
        long_timeouts(options);
        options
            .overrides
            .insert("SMS_RATE_PER_SECOND".to_owned(), "1000".to_owned());
        // The sandbox's sender is the organization's own number: its replies route by the
        // number, so the sends need no reply route of their own.
        options.overrides.insert(
            "TWILIO_NUMBER_ORGS".to_owned(),
            format!(
                "{}={OWN_NUMBER_ORG}",
                local::sandbox::twilio::SANDBOX_NUMBER
            ),
        );
    })
    .await;
    // 26: two send jobs, the second a remainder of one. Each job sends one SMS after the
    // other, so under a loaded moto this takes a while; the timeout only bounds a hang.
    let n: u64 = 26;
    let run = bulk_efficiency::bulk_sms(
        &t.bundle,
        Some(OWN_NUMBER_ORG),
        26,
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    let table = run.table();
    println!("{table}"); // `-- --nocapture` shows the counts
    assert_eq!(run.statuses.get("delivered"), Some(&26), "{table}");
    assert_eq!(run.provider_calls, n, "{table}");
    let queue = |logical_id: &str| {
        let name = t.bundle.resource(logical_id).rsplit('/').next().unwrap();
        run.sdk.messages_by_queue.get(name).copied().unwrap_or(0)
    };
    assert_eq!(queue("SmsBulkQueue"), 1, "{table}");
    // The fan-out sends ⌈n/25⌉ jobs; on a loaded moto a job can outlast its wait budget and
    // hand its rest back as one more message (the Twilio calls above stay one per SMS).
    assert!(queue("SmsSendQueue") >= n.div_ceil(25), "{table}");
    assert!(queue("SmsSendQueue") <= 2 * n.div_ceil(25) + 2, "{table}");
    assert_eq!(
        run.sdk.get("DynamoDB", "BatchWriteItem").items,
        n,
        "each record created once\n{table}"
    );

    // DynamoDB item writes per SMS, by item:
    // - the record: created (batched) in its send job, its outcome, and Twilio's final
    //   callback (`delivered`). The send job is claimed (and let go) once per job, not each
    //   SMS. The in-progress callback (`sent`) changes nothing once the worker recorded the
    //   send; where it overtakes that write, it moves the record on (with the SID and the
    //   attempt) and the worker's outcome write fails its condition: ≤ 4.
    // - the send window: one booking per group of sends (claims come before the booking,
    //   so their round trips do not make the sends late), and on a loaded machine more for
    //   the sends that still wake late (one at a time per worker);
    // - the number's last sender (`SMSPEER`, for routing a reply's STOP): none, the sender
    //   being the organization's own number (one per SMS from a shared number). No SID →
    //   record link: callbacks come to the URL that names their record.
    let writes = |kind: &str| run.sdk.writes_by_item.get(kind).copied().unwrap_or(0);
    assert!(writes("SMS") <= 4 * n, "{table}");
    assert!(writes("SENDJOB") <= 2 * queue("SmsSendQueue"), "{table}");
    // (A loaded CI machine wakes sends late and two workers' rebookings can refuse each
    // other: 36 window writes for 26 SMS in one run. The code before claims-first made 5.4
    // per SMS on a quiet machine, 23 on a loaded one.)
    assert!(writes("WINDOW") <= 3 * n, "{table}");
    assert_eq!(writes("SMSPEER"), 0, "{table}");
    assert_eq!(writes("SMSSID"), 0, "{table}");
}
