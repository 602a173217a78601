//! Write sharding (issue 10): an organization's emails spread over `RECORD_SHARDS` partition
//! keys, the bulk fan-out reads every shard of its index key, and listings merge the shards
//! into one newest-first list that pages with filters and org-bound cursors as before.

use std::collections::HashSet;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use crate::helpers::{TestBundle, eventually, spawn_bundle};

/// Every id listed at `path`, page by page, and the size of each page.
async fn page_through(app: &TestBundle, token: &str, path: &str) -> (Vec<String>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.to_owned(),
        };
        let page = app.get(&url, token).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        sizes.push(items.len());
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ids, sizes),
        }
        assert!(sizes.len() < 100, "paging never ends");
    }
}

#[tokio::test]
async fn records_spread_over_shards_and_list_newest_first_with_filters_and_cursors() {
    let app = spawn_bundle().await;
    let acme = app.token("acme", "admin");
    let globex = app.token("globex", "admin");

    let recipients: Vec<Value> = (0..60)
        .map(|n| json!({"to": format!("spread{n}@example.com")}))
        .collect();
    let bulk = app
        .post(
            "/services/email/",
            &acme,
            json!({"subject": "Hi", "text": "Hello", "campaign": "spread", "recipients": recipients}),
        )
        .await;
    assert_eq!(bulk.status, 202, "{}", bulk.body);
    let bulk_ids: HashSet<String> = bulk.body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut all_ids = bulk_ids.clone();
    for n in 0..5 {
        let reply = app
            .post(
                "/services/email/",
                &acme,
                json!({"to": format!("single{n}@example.com"), "subject": "One", "text": "One"}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        all_ids.insert(reply.body["id"].as_str().unwrap().to_owned());
    }
    let other = app
        .post(
            "/services/email/",
            &globex,
            json!({"to": "g@example.com", "subject": "G", "text": "G"}),
        )
        .await;
    assert_eq!(other.status, 202, "{}", other.body);

    // The fan-out found every bulk email, whichever shard of the bulk's index key it is on.
    let sandbox = app.sandbox();
    eventually(120, "60 bulk recipients at SendGrid", || async {
        let bulk_sent = sandbox
            .inbox()
            .iter()
            .filter(|m| m["to"].as_str().is_some_and(|to| to.starts_with("spread")))
            .count();
        (bulk_sent == 60).then_some(())
    })
    .await;

    // Stored on many shard keys, none on the organization's own partition.
    let mut shard_keys = HashSet::new();
    let mut start = None;
    loop {
        let output = app
            .bundle
            .aws
            .dynamodb
            .scan()
            .table_name(app.table())
            .filter_expression("begins_with(sk, :email)")
            .expression_attribute_values(":email", AttributeValue::S("EMAIL#".into()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in output.items.unwrap_or_default() {
            let pk = item["pk"].as_s().unwrap().clone();
            assert!(
                pk.starts_with("ORG#acme#EMAIL#") || pk.starts_with("ORG#globex#EMAIL#"),
                "{pk}"
            );
            shard_keys.insert(pk);
        }
        start = output.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    let acme_shards = shard_keys
        .iter()
        .filter(|pk| pk.starts_with("ORG#acme#"))
        .count();
    assert!(acme_shards >= 8, "65 emails on only {acme_shards} shards");

    // The whole list, newest first, every page full but the last, nothing twice.
    let (listed, sizes) = page_through(&app, &acme, "/services/email/?limit=7").await;
    assert_eq!(listed.len(), 65, "{sizes:?}");
    assert_eq!(listed.iter().cloned().collect::<HashSet<_>>(), all_ids);
    let mut newest_first = listed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first);
    assert!(
        sizes[..sizes.len() - 1].iter().all(|size| *size == 7),
        "{sizes:?}"
    );

    // A filter keeps pages full across shards.
    let (campaign, sizes) =
        page_through(&app, &acme, "/services/email/?campaign=spread&limit=9").await;
    assert_eq!(campaign.iter().cloned().collect::<HashSet<_>>(), bulk_ids);
    assert_eq!(campaign.len(), 60);
    assert!(
        sizes[..sizes.len() - 1].iter().all(|size| *size == 9),
        "{sizes:?}"
    );

    // The cursor is still bound to its organization and query.
    let first = app.get("/services/email/?limit=3", &acme).await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let stolen = app
        .get(
            &format!("/services/email/?limit=3&cursor={cursor}"),
            &globex,
        )
        .await;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    let refiltered = app
        .get(
            &format!("/services/email/?limit=3&campaign=spread&cursor={cursor}"),
            &acme,
        )
        .await;
    assert_eq!(refiltered.status, 400, "{}", refiltered.body);
    let globex_list = app.get("/services/email/?limit=100", &globex).await;
    assert_eq!(globex_list.body["items"].as_array().unwrap().len(), 1);

    // Point reads find each record on its shard.
    for id in listed.iter().step_by(9) {
        let email = app.get(&format!("/services/email/{id}"), &acme).await;
        assert_eq!(email.status, 200, "{}", email.body);
        assert_eq!(email.body["id"], id.as_str());
        let foreign = app.get(&format!("/services/email/{id}"), &globex).await;
        assert_eq!(foreign.status, 404);
    }
}
