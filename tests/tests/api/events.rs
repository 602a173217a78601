//! Handler tests: the sample events in `events/` (the files `sam local invoke -e` uses),
//! fed straight to the handler code Lambda runs, against a real table in moto.

use functions::templates_api::TemplatesApi;
use lambda_http::Body;
use shared::aws::AwsClients;
use shared::config::Env;

use crate::helpers::{aws_endpoint, workspace_root};

fn event(name: &str) -> lambda_http::Request {
    let path = workspace_root().join("events/templates-api").join(name);
    lambda_http::request::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the event parses")
}

fn json_body(response: &lambda_http::Response<Body>) -> serde_json::Value {
    match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("unexpected body {other:?}"),
    }
}

#[tokio::test]
async fn sample_events_run_through_the_templates_handler() {
    let prefix = format!("e{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let env = Env::from_map(
        [
            ("AWS_ENDPOINT_URL", aws_endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    );
    let aws = AwsClients::load(&env).await;
    let template =
        local::template::BundleTemplate::load(&workspace_root().join("template.yaml")).unwrap();
    let names = local::resources::create_all(&template, &aws, &prefix, &Default::default())
        .await
        .unwrap();
    let mut vars: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    vars.insert(
        "TABLE_NAME".to_owned(),
        names["HeraldTable"].reference.clone(),
    );
    let api = TemplatesApi::new(&aws, &Env::from_map(vars)).unwrap();

    let created = api.handle(event("create-email-template.json")).await;
    assert_eq!(created.status(), 201, "{:?}", created.body());
    let body = json_body(&created);
    assert_eq!(
        body["organization"], "acme",
        "the organization comes from the authorizer claims"
    );
    assert_eq!(body["variables"][0], "first_name");

    let listed = api.handle(event("list-sms-templates.json")).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(json_body(&listed)["items"], serde_json::json!([]));
}
