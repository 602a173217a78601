//! The status callback URL Herald gives Twilio for each message, and reading it back.
//!
//! Twilio's status callbacks carry the message's SID and can arrive before the send worker
//! has recorded that SID (they overtake the create's answer, or the worker's write after
//! it). So each message's `StatusCallback` names the record itself, in its query string:
//! `<TWILIO_WEBHOOK_URL>?org=<org>&sms=<id>`. Twilio signs the whole URL, query included
//! ("Webhooks security": the signature covers "the full URL … through the end of the query
//! string"), so a callback's record reference is as trustworthy as its signature.

use crate::domain::{OrgId, RecordId};

/// The callback URL for one message: `base` with the record's organization and id added to
/// its query string.
pub fn status_callback_url(base: &str, org: &OrgId, sms_id: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("org", org.as_str())
        .append_pair("sms", sms_id)
        .finish();
    format!("{base}{separator}{query}")
}

/// The URL Twilio signed for a request that reached `public_url` with `query` (the raw
/// query string as received): the configured URL's scheme, host and path, and the query
/// the request carried.
pub fn signed_url(public_url: &str, query: Option<&str>) -> String {
    let base = public_url.split('?').next().unwrap_or(public_url);
    match query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{base}?{query}"),
        None => base.to_owned(),
    }
}

/// The record a callback's query string names, if it names a valid one.
pub fn record_of(query: Option<&str>) -> Option<(OrgId, String)> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query?.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let org = OrgId::parse(value("org")?).ok()?;
    let id = RecordId::parse(value("sms")?)?;
    Some((org, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_url_names_its_record_and_reads_back() {
        let org = OrgId::parse("acme").unwrap();
        let id = RecordId::new().to_string();
        let url = status_callback_url("https://hooks.example/twilio/", &org, &id);
        assert_eq!(
            url,
            format!("https://hooks.example/twilio/?org=acme&sms={id}")
        );
        let query = url.split_once('?').map(|(_, q)| q);
        assert_eq!(record_of(query), Some((org.clone(), id.clone())));
        assert_eq!(signed_url("https://hooks.example/twilio/", query), url);
        // A configured URL with a query of its own keeps it, and the record is added.
        let with_query = status_callback_url("https://h.example/t?k=1", &org, &id);
        assert!(with_query.starts_with("https://h.example/t?k=1&org=acme&sms="));
        assert_eq!(record_of(Some("org=acme&sms=not-a-ulid")), None);
        assert_eq!(record_of(Some("org=a%23b&sms=01J")), None);
        assert_eq!(
            signed_url("https://h.example/t", None),
            "https://h.example/t"
        );
    }
}
