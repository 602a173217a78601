//! Lambda entry point: the SMS API (/services/sms/, /services/phonebooks/).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (aws, env) = functions::runtime::cold_start().await;
    let function = functions::sms_api::SmsApi::new(&aws, &env)?;
    functions::runtime::serve_http(function).await
}
