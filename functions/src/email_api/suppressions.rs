//! Suppressions: the list of addresses SendGrid will not mail, and lifting one.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};

use shared::auth::Caller;
use shared::consent::{ALL_TOPICS, Channel, ConsentSource, ConsentState};
use shared::http::{self, ApiError, PageRequest};
use shared::store::ConsentChange;

use super::EmailApi;

impl EmailApi {
    pub(super) async fn list_suppressions(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = caller.listed_org(&params)?;
        let page = PageRequest::from_query(&params, org.as_str())?;
        let (entries, next) = self.emails.list_suppressions(&org, &page).await?;
        http::page(&page, &entries, next)
    }

    pub(super) async fn delete_suppression(
        &self,
        request: &Request,
        caller: &Caller,
        address: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.emails.delete_suppression(&caller.org, address).await?;
        self.lift_bounce_in_ledger(caller, address).await?;
        let resource = format!("suppression/{address}");
        self.audit(request, caller, "email.suppression.delete", resource, &[])
            .await;
        Ok(http::no_content())
    }

    /// Lifting a suppression re-enables the address in the consent ledger too, when what
    /// took it out of everything was a bounce. A person's own choice (a spam report, an
    /// unsubscribe, a one-click link) stays: only a new choice, recorded with its source
    /// (`PUT /services/consent/`), changes it.
    async fn lift_bounce_in_ledger(&self, caller: &Caller, address: &str) -> Result<(), ApiError> {
        let subject = address.to_lowercase();
        let states = self
            .consent
            .states(&caller.org, Channel::Email, &subject)
            .await?;
        let bounced = states.iter().any(|c| {
            c.topic == ALL_TOPICS
                && c.state == ConsentState::OptedOut
                && c.source == ConsentSource::Bounce
        });
        if bounced {
            let change = ConsentChange {
                channel: Channel::Email,
                subject,
                topic: ALL_TOPICS.to_owned(),
                state: ConsentState::OptedIn,
                source: ConsentSource::Api,
                actor: caller.user.clone(),
                evidence: BTreeMap::from([("action".to_owned(), "suppression lifted".to_owned())]),
                at: chrono::Utc::now(),
            };
            self.consent.record(&caller.org, &change, None).await?;
        }
        Ok(())
    }
}
