//! AWS SDK configuration. The endpoint, region and credentials come only from the
//! standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`,
//! `AWS_REGION`, ...), so the same binaries talk to AWS, LocalStack or moto.

/// Loads the SDK configuration once (at cold start, outside the handler).
pub async fn load_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
