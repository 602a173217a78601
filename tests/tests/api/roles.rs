//! Roles and the organization claim cannot be spoofed (issue 17 §3), through the local
//! authorizer and a real handler: the claim values are matched exactly, and `superuser`
//! counts only for the platform organization. The parsing rules themselves are unit-tested
//! in `shared::auth`.

use serde_json::json;

use crate::helpers::spawn_bundle;

#[tokio::test]
async fn group_names_that_contain_a_role_grant_nothing_and_a_tenant_superuser_is_an_admin() {
    let app = spawn_bundle().await;
    let mint = |org: &str, roles: &[&str]| {
        app.bundle
            .auth
            .mint("user-1", Some(org), roles, 600)
            .unwrap()
    };
    let template = json!({"name": "welcome", "body": "Hi"});

    for roles in [
        &["Billing Admin"][..],
        &["admin "],
        &["ADMIN"],
        &["Not Superuser"],
    ] {
        let token = mint("acme", roles);
        app.post("/services/templates/sms/", &token, template.clone())
            .await
            .problem(403);
        app.get("/services/templates/sms/", &token)
            .await
            .problem(403);
    }

    // A superuser claim outside the platform organization is an admin of its own
    // organization: it may create there, but not read across organizations.
    let tenant_root = mint("acme", &["superuser"]);
    assert_eq!(
        app.post("/services/templates/sms/", &tenant_root, template.clone())
            .await
            .status,
        201
    );
    app.get("/services/templates/sms/?organization=globex", &tenant_root)
        .await
        .problem(403);

    let root = mint("platform", &["superuser"]);
    assert_eq!(
        app.get("/services/templates/sms/?organization=acme", &root)
            .await
            .status,
        200
    );
}

/// Issue 21: a function's typed operation table names each operation's role, and the
/// function checks it once, before reading the request: every operation refuses a caller
/// below its role with 403, whatever the body. (Functions join this test as their routes
/// become typed tables.)
#[tokio::test]
async fn every_typed_operation_refuses_a_caller_below_its_role() {
    use functions::audit_api::AuditOperation;
    use functions::consent_api::ConsentOperation;
    use functions::email_api::EmailOperation;
    use functions::operations_api::OperationsOperation;
    use functions::payments_api::PaymentOperation;
    use functions::reports_api::ReportOperation;
    use functions::sms_api::SmsOperation;
    use functions::templates_api::TemplateOperation;
    use shared::auth::Role;

    let app = spawn_bundle().await;
    let member = app.token("acme", "member");
    let admin = app.token("acme", "admin");
    let nobody = app.mint_without_roles("acme");
    let operations = [
        ConsentOperation::TABLE,
        EmailOperation::TABLE,
        SmsOperation::TABLE,
        TemplateOperation::TABLE,
        PaymentOperation::TABLE,
        ReportOperation::TABLE,
        AuditOperation::TABLE,
        OperationsOperation::TABLE,
    ]
    .concat();
    for (route, role) in operations {
        let path = route
            .pattern
            .replace("{key}", "newsletter")
            .replace("{kind}", "email")
            .replace("{queue}", "email-send")
            .replace("{address}", "ann%40example.com")
            .replace("{id}", &shared::domain::RecordId::new().to_string());
        let below = match role {
            Role::Member => &nobody,
            Role::Admin => &member,
            Role::Superuser => &admin,
        };
        let reply = app
            .call(
                route.method,
                &format!("{path}/"),
                Some(below),
                Some(json!({})),
            )
            .await;
        assert_eq!(reply.status, 403, "{} {path}: {}", route.method, reply.body);
    }
}
