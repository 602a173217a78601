//! The template admin API (SPEC §11): `/services/templates/{email,sms,message}/…`.
//!
//! Members read and preview; admins create, change and delete; superusers also list and
//! open other organizations' templates.

use std::collections::BTreeMap;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use shared::auth::{Caller, ClaimNames};
use shared::aws::AwsClients;
use shared::config::{ConfigError, Env};
use shared::domain::RecordId;
use shared::domain::template::{Template, TemplateInput, TemplateKind};
use shared::events::{Event, EventPublisher};
use shared::http::{self, ApiError, PageRequest, Route, RouteMatch};
use shared::render::RenderError;
use shared::store::{TemplateListQuery, TemplateOrder, TemplateStore};

use crate::runtime::{BoxFuture, HttpFunction};

shared::operations! {
    /// Every operation of the templates API, with the role it needs.
    pub enum TemplateOperation {
        List = "GET" "/services/templates/{kind}" Member,
        Create = "POST" "/services/templates/{kind}" Admin,
        Get = "GET" "/services/templates/{kind}/{id}" Member,
        Replace = "PUT" "/services/templates/{kind}/{id}" Admin,
        Update = "PATCH" "/services/templates/{kind}/{id}" Admin,
        Delete = "DELETE" "/services/templates/{kind}/{id}" Admin,
        Preview = "POST" "/services/templates/{kind}/{id}/preview" Member,
    }
}

pub const ROUTES: &[Route] = TemplateOperation::ROUTES;

pub struct TemplatesApi {
    store: TemplateStore,
    events: EventPublisher,
    claims: ClaimNames,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    #[serde(default = "empty_object")]
    variables: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

impl HttpFunction for TemplatesApi {
    fn call(&self, request: Request) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(request))
    }
}

impl TemplatesApi {
    /// # Errors
    /// When `TABLE_NAME` is not set.
    pub fn new(aws: &AwsClients, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            store: TemplateStore::new(aws.dynamodb.clone(), env.required("TABLE_NAME")?),
            events: EventPublisher::new(aws.sqs.clone(), env.optional("EVENTS_QUEUE_URL")),
            claims: ClaimNames::from_env(env),
        })
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        http::respond("templates-api", &request, || self.dispatch(&request)).await
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        use TemplateOperation as Op;
        let (operation, found, caller) = TemplateOperation::authorize(request, &self.claims)?;
        let kind = TemplateKind::parse(found.param("kind")).ok_or(ApiError::NotFound)?;
        match operation {
            Op::List => self.list(request, &caller, kind).await,
            Op::Create => self.create(request, &caller, kind).await,
            Op::Get => Ok(http::json(
                200,
                &self.fetch(&caller, kind, &found).await?.to_json(),
            )?),
            Op::Replace => self.update(request, &caller, kind, &found, false).await,
            Op::Update => self.update(request, &caller, kind, &found, true).await,
            Op::Delete => self.delete(request, &caller, kind, &found).await,
            Op::Preview => self.preview(request, &caller, kind, &found).await,
        }
    }

    async fn list(
        &self,
        request: &Request,
        caller: &Caller,
        kind: TemplateKind,
    ) -> Result<Response<Body>, ApiError> {
        let params = http::query_map(request);
        let org = match caller.organization_filter(&params)? {
            None if !caller.is_superuser() => Some(caller.org.clone()),
            filter => filter,
        };
        let order = match params.get("ordering") {
            None => TemplateOrder::default(),
            Some(value) => TemplateOrder::parse(value).ok_or_else(|| {
                ApiError::field(
                    "ordering",
                    "must be one of -created_at, created_at, name, -name",
                )
            })?,
        };
        if order.by_name() && org.is_none() {
            return Err(ApiError::field(
                "ordering",
                "ordering by name across organizations needs the organization filter",
            ));
        }
        let query = TemplateListQuery {
            kind,
            search: params.get("search").cloned(),
            is_active: http::query_bool(&params, "is_active")?,
            created_after: http::query_time(&params, "created_after")?,
            created_before: http::query_time(&params, "created_before")?,
            order,
            org: org.clone(),
        };
        // The cursor is bound to what the caller may see: their organization, or "*" for a
        // superuser's cross-organization listing.
        let scope = if caller.is_superuser() {
            "*".to_owned()
        } else {
            caller.org.to_string()
        };
        let page = PageRequest::from_query(&params, &scope)?;
        let (templates, next) = self.store.list(&query, &page).await?;
        let items: Vec<_> = templates.iter().map(Template::to_json).collect();
        http::page(&page, &items, next)
    }

    /// Publishes the audit entry of a change. The entry belongs to the template's
    /// organization, whose admins audit it, even when a superuser of another organization
    /// made the change; the actor's own organization is in `detail.actor_org`. (A top-level
    /// field would need the event store's document shape to change too.)
    async fn audit(
        &self,
        request: &Request,
        caller: &Caller,
        action: &str,
        kind: TemplateKind,
        template: &Template,
    ) {
        let resource = format!("template/{}/{}", kind.as_str(), template.id);
        let event = Event {
            org_id: template.org.clone(),
            ..Event::audit(caller, &http::request_id(request), action, resource)
        }
        .with_detail(json!({"name": template.name, "actor_org": caller.org}));
        self.events.publish(vec![event]).await;
    }

    async fn create(
        &self,
        request: &Request,
        caller: &Caller,
        kind: TemplateKind,
    ) -> Result<Response<Body>, ApiError> {
        let input: TemplateInput = http::parse_json(request)?;
        let fields = input.validate(kind, None).map_err(ApiError::invalid)?;
        let now = chrono::Utc::now();
        let template = Template {
            id: RecordId::new(),
            org: caller.org.clone(),
            name: fields.name,
            is_active: fields.is_active,
            content: fields.content,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        self.store.create(&template).await?;
        tracing::info!(template = %template.id, kind = kind.as_str(), "template created");
        self.audit(request, caller, "template.create", kind, &template)
            .await;
        http::json(201, &template.to_json())
    }

    /// The template a path names, if the caller may see it: their own organization's, or
    /// any organization's for a superuser. Anything else is 404, exactly like a missing one.
    async fn fetch(
        &self,
        caller: &Caller,
        kind: TemplateKind,
        found: &RouteMatch,
    ) -> Result<Template, ApiError> {
        let id = RecordId::parse(found.param("id")).ok_or(ApiError::NotFound)?;
        let org = if caller.is_superuser() {
            self.store.owner_of(kind, id).await?
        } else {
            caller.org.clone()
        };
        Ok(self.store.get(&org, kind, id).await?)
    }

    async fn update(
        &self,
        request: &Request,
        caller: &Caller,
        kind: TemplateKind,
        found: &RouteMatch,
        partial: bool,
    ) -> Result<Response<Body>, ApiError> {
        let current = self.fetch(caller, kind, found).await?;
        let input: TemplateInput = http::parse_json(request)?;
        let fields = input
            .validate(kind, partial.then_some(&current))
            .map_err(ApiError::invalid)?;
        let updated = Template {
            name: fields.name,
            is_active: fields.is_active,
            content: fields.content,
            updated_at: chrono::Utc::now(),
            version: current.version + 1,
            ..current.clone()
        };
        self.store.replace(&updated, current.version).await?;
        tracing::info!(template = %updated.id, kind = kind.as_str(), "template updated");
        self.audit(request, caller, "template.update", kind, &updated)
            .await;
        http::json(200, &updated.to_json())
    }

    async fn delete(
        &self,
        request: &Request,
        caller: &Caller,
        kind: TemplateKind,
        found: &RouteMatch,
    ) -> Result<Response<Body>, ApiError> {
        let template = self.fetch(caller, kind, found).await?;
        self.store
            .delete(&template.org, kind, template.id, chrono::Utc::now())
            .await?;
        tracing::info!(template = %template.id, kind = kind.as_str(), "template deleted");
        self.audit(request, caller, "template.delete", kind, &template)
            .await;
        Ok(http::no_content())
    }

    async fn preview(
        &self,
        request: &Request,
        caller: &Caller,
        kind: TemplateKind,
        found: &RouteMatch,
    ) -> Result<Response<Body>, ApiError> {
        let template = self.fetch(caller, kind, found).await?;
        let preview: PreviewRequest = if http::body_bytes(request)
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            PreviewRequest {
                variables: empty_object(),
            }
        } else {
            http::parse_json(request)?
        };
        if !preview.variables.is_object() {
            return Err(ApiError::field("variables", "must be an object"));
        }
        match template.render(&preview.variables) {
            Ok(rendered) => http::json(200, &rendered),
            Err(RenderError::MissingVariable(name)) => {
                let mut errors = BTreeMap::new();
                errors.insert(
                    "variables".to_owned(),
                    vec![format!("missing variable: {name}")],
                );
                Err(ApiError::Validation {
                    detail: format!("missing variable: {name}"),
                    errors,
                })
            }
            Err(RenderError::Template(message)) => Err(ApiError::BadRequest(format!(
                "the template cannot be rendered: {message}"
            ))),
        }
    }
}
