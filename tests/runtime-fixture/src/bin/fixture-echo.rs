//! HTTP fixture: answers with what API Gateway handed it (claims, route, parameters).
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};

async fn handle(
    event: LambdaEvent<ApiGatewayV2httpRequest>,
) -> Result<ApiGatewayV2httpResponse, Error> {
    let req = event.payload;
    let claims = req
        .request_context
        .authorizer
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|j| j.claims.clone());
    let body = serde_json::json!({
        "sub": claims.as_ref().and_then(|c| c.get("sub").cloned()),
        "routeKey": req.route_key,
        "method": req.request_context.http.method.as_str(),
        "rawPath": req.raw_path,
        "rawQueryString": req.raw_query_string,
        "pathParameters": req.path_parameters,
        "query": req.query_string_parameters.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<std::collections::BTreeMap<_, _>>(),
        "body": req.body,
        "isBase64Encoded": req.is_base64_encoded,
        "requestId": event.context.request_id,
    });
    runtime_fixture::record("echo", &body);
    let mut headers = aws_lambda_events::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("x-fixture", "echo".parse().unwrap());
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = if req.raw_path.as_deref() == Some("/teapot") {
        418
    } else {
        200
    };
    response.headers = headers;
    response.body = Some(body.to_string().into());
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
