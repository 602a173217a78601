//! Lambda entry point: the template admin web page.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::logging::init_lambda();
    functions::runtime::serve_http(functions::admin_page::AdminPage::new()).await
}
