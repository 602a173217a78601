//! Customers: `POST /services/payments/customers` (a Stripe customer) and the list.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::Caller;
use shared::domain::email::EmailAddress;
use shared::http::{self, ApiError, FieldErrorCollector};
use shared::payments::CustomerRecord;
use shared::providers::stripe::Deadline;

use super::PaymentsApi;
use super::checks::{check_metadata, check_text, metadata_for};
use super::stripe_calls::NewStripeObject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerRequest {
    email: Option<String>,
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A customer as a request asks for it, checked.
struct NewCustomer {
    email: Option<EmailAddress>,
    name: Option<String>,
    description: Option<String>,
    metadata: BTreeMap<String, String>,
}

impl TryFrom<CustomerRequest> for NewCustomer {
    type Error = ApiError;

    fn try_from(body: CustomerRequest) -> Result<Self, ApiError> {
        let mut errors = FieldErrorCollector::new();
        let email = body.email.as_deref().and_then(|e| {
            EmailAddress::parse(e)
                .map_err(|m| errors.add("email", m))
                .ok()
        });
        check_text(body.name.as_ref(), "name", 256, &mut errors);
        check_text(body.description.as_ref(), "description", 500, &mut errors);
        check_metadata(&body.metadata, &mut errors);
        if body.email.is_none() && body.name.is_none() {
            errors.add("email", "an email or a name is required");
        }
        errors.finish()?;
        Ok(Self {
            email,
            name: body.name,
            description: body.description,
            metadata: body.metadata,
        })
    }
}

impl PaymentsApi {
    pub(super) async fn create_customer(
        &self,
        request: &Request,
        caller: &Caller,
        deadline: Deadline,
    ) -> Result<Response<Body>, ApiError> {
        self.stripe().await?;
        let customer = NewCustomer::try_from(http::parse_json::<CustomerRequest>(request)?)?;
        let email = customer.email.as_ref().map(ToString::to_string);
        let new = NewStripeObject {
            kind: "customer",
            path: "/v1/customers",
            params: |id: &str| {
                json!({
                    "email": email,
                    "name": customer.name,
                    "description": customer.description,
                    "metadata": metadata_for(&customer.metadata, caller, id),
                })
            },
        };
        self.create_through_stripe(request, caller, new, CustomerRecord::to_json, deadline)
            .await
    }

    pub(super) async fn list_customers(
        &self,
        request: &Request,
        caller: &Caller,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let mut filters = Vec::new();
        if let Some(email) = params.get("email") {
            filters.push(("email", email.trim().to_ascii_lowercase()));
        }
        self.list(caller, &params, filters, CustomerRecord::to_json)
            .await
    }
}
