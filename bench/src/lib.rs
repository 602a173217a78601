//! Performance measurements that need more than criterion: the cold-start benchmark and the
//! bulk-efficiency counters.

pub mod bulk_efficiency;
pub mod coldstart;
pub mod runtime_api;

/// Takes records `ids` out of the send jobs the API created them in (`send_job`), as the
/// sweep does for the records of a lost job: a run that enqueues them in jobs of its own
/// needs them claimable one by one (a record still naming its job is only that job's).
///
/// # Errors
/// When the table cannot be scanned or updated.
pub async fn out_of_send_jobs(bundle: &local::RunningBundle, ids: &[String]) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let dynamodb = &bundle.aws.dynamodb;
    let table = bundle.resource("HeraldTable");
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .filter_expression("attribute_exists(send_job)")
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in page.items() {
            let Some(AttributeValue::S(id)) = item.get("id") else {
                continue;
            };
            if !ids.contains(id) {
                continue;
            }
            dynamodb
                .update_item()
                .table_name(table)
                .key("pk", item["pk"].clone())
                .key("sk", item["sk"].clone())
                .update_expression("REMOVE send_job")
                .send()
                .await?;
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(());
        }
    }
}
