//! API Gateway **HTTP API** emulation: route selection, the JWT authorizer and the Lambda
//! proxy integration with payload format 2.0, as AWS does them.
//!
//! [`router`] returns an axum [`Router`] whose only handler is a *fallback*, so the caller
//! can `merge` other routes into it (e.g. a `/__local` admin router, which must not have a
//! fallback of its own; its routes then win over the HTTP API's). Serve it with
//! connect info so that `requestContext.http.sourceIp` is the peer address:
//!
//! ```ignore
//! let app = http_api::router(config, invoker).merge(admin);
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! ```
//!
//! Without `ConnectInfo<SocketAddr>` the source IP falls back to `127.0.0.1`.
//!
//! Route selection (most specific first): routes without a greedy variable beat routes with
//! one, which beat `$default`; among those, segment by segment from the left a literal beats
//! `{param}`, which beats `{proxy+}`; for the same path an exact method beats `ANY`. A route
//! whose path is `$default` is the catch-all. Nothing matched → 404 `{"message":"Not Found"}`.
//!
//! Errors answer as API Gateway does, JSON `{"message": ...}`: 401 Unauthorized (with
//! `www-authenticate: Bearer`), 404 Not Found, 413 Request Entity Too Large, 500 Internal
//! Server Error (function error, crash, unknown function or malformed response), 503
//! Service Unavailable (function timeout). Details go to the log, never to the client.
//! Every response carries an `apigw-requestid` header (the event's `requestId`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::{Invoke, InvokeError, jwt};

/// API Gateway's payload limit for HTTP APIs: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// `requestContext.accountId` of every event.
pub const ACCOUNT_ID: &str = "123456789012";
/// `requestContext.apiId` of every event.
pub const API_ID: &str = "local";

/// One route of the HTTP API (an `AWS::Serverless::Function` event of type `HttpApi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The function's logical id in the template.
    pub function: String,
    /// `GET`, `POST`, ... or `ANY` (case-insensitive).
    pub method: String,
    /// `/v1/connections/{id}`, `/{proxy+}`, or `$default`.
    pub path: String,
    /// Whether the JWT authorizer guards the route.
    pub protected: bool,
}

impl RouteSpec {
    pub fn new(
        function: impl Into<String>,
        method: impl Into<String>,
        path: impl Into<String>,
        protected: bool,
    ) -> Self {
        Self {
            function: function.into(),
            method: method.into(),
            path: path.into(),
            protected,
        }
    }

    /// The API Gateway route key: `"GET /v1/connections/{id}"`, `"ANY /{proxy+}"` or
    /// `"$default"`.
    pub fn route_key(&self) -> String {
        if self.path == "$default" {
            "$default".to_owned()
        } else {
            format!("{} {}", self.method.to_ascii_uppercase(), self.path)
        }
    }
}

#[derive(Clone)]
pub struct HttpApiConfig {
    pub routes: Vec<RouteSpec>,
    /// HS256 secret of the JWT authorizer.
    pub jwt_secret: String,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Larger request bodies get 413 without invoking anything.
    pub max_body_bytes: usize,
}

impl HttpApiConfig {
    /// The given routes, the secret from `LOCAL_JWT_SECRET` (or the default), no audience
    /// check and API Gateway's 10 MiB body limit.
    pub fn new(routes: Vec<RouteSpec>) -> Self {
        Self {
            routes,
            jwt_secret: jwt::secret_from_env(),
            audience: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl fmt::Debug for HttpApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApiConfig")
            .field("routes", &self.routes)
            .field("jwt_secret", &"<redacted>")
            .field("audience", &self.audience)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The HTTP API as an axum router (a fallback handler; see the module docs).
pub fn router(config: HttpApiConfig, invoker: Arc<dyn Invoke>) -> Router {
    let routes = config
        .routes
        .iter()
        .filter_map(|spec| match CompiledRoute::compile(spec) {
            Ok(route) => Some(route),
            Err(why) => {
                tracing::warn!(route_key = %spec.route_key(), function = %spec.function, why = %why, "ignoring invalid HTTP API route");
                None
            }
        })
        .collect();
    let api = Arc::new(Api {
        routes,
        jwt_secret: config.jwt_secret,
        audience: config.audience,
        max_body_bytes: config.max_body_bytes,
        invoker,
    });
    Router::new().fallback(handle).with_state(api)
}

struct Api {
    routes: Vec<CompiledRoute>,
    jwt_secret: String,
    audience: Option<String>,
    max_body_bytes: usize,
    invoker: Arc<dyn Invoke>,
}

// ---------------------------------------------------------------------------------------
// Route selection

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 3,
            Segment::Param(_) => 2,
            Segment::Greedy(_) => 1,
        }
    }
}

struct CompiledRoute {
    spec: RouteSpec,
    route_key: String,
    /// Upper-case method; `None` for `ANY`.
    method: Option<String>,
    /// `None` for `$default`.
    segments: Option<Vec<Segment>>,
}

impl CompiledRoute {
    fn compile(spec: &RouteSpec) -> Result<Self, &'static str> {
        let method = spec.method.trim().to_ascii_uppercase();
        let method = match method.as_str() {
            "" => return Err("empty method"),
            "ANY" | "$DEFAULT" => None,
            _ => Some(method),
        };
        let segments = if spec.path == "$default" {
            None
        } else {
            let Some(rest) = spec.path.strip_prefix('/') else {
                return Err("path must start with / (or be $default)");
            };
            let raw: Vec<&str> = rest.split('/').collect();
            let mut segments = Vec::with_capacity(raw.len());
            for (i, seg) in raw.iter().enumerate() {
                let segment = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if name.ends_with('+') => {
                        if i + 1 != raw.len() {
                            return Err("a greedy {name+} variable must be the last segment");
                        }
                        Segment::Greedy(name.trim_end_matches('+').to_owned())
                    }
                    Some("") => return Err("empty path variable name"),
                    Some(name) => Segment::Param(name.to_owned()),
                    None => Segment::Literal((*seg).to_owned()),
                };
                segments.push(segment);
            }
            Some(segments)
        };
        Ok(Self {
            route_key: spec.route_key(),
            spec: spec.clone(),
            method,
            segments,
        })
    }

    /// Path parameters (decoded) when `path` matches this route's template.
    fn match_path(&self, raw_segments: &[&str]) -> Option<BTreeMap<String, String>> {
        let Some(template) = &self.segments else {
            return Some(BTreeMap::new());
        };
        let mut params = BTreeMap::new();
        for (i, segment) in template.iter().enumerate() {
            match segment {
                Segment::Greedy(name) => {
                    let rest = raw_segments.get(i..)?.join("/");
                    if rest.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), percent_decode(&rest));
                    return Some(params);
                }
                Segment::Literal(literal) => {
                    let raw = raw_segments.get(i)?;
                    if *raw != literal && percent_decode(raw) != *literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let raw = raw_segments.get(i)?;
                    if raw.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), percent_decode(raw));
                }
            }
        }
        (raw_segments.len() == template.len()).then_some(params)
    }

    /// Higher is more specific.
    fn specificity(&self) -> (u8, Vec<u8>, bool) {
        let tier = match &self.segments {
            None => 0,
            Some(s) if s.iter().any(|s| matches!(s, Segment::Greedy(_))) => 1,
            Some(_) => 2,
        };
        let ranks = self.segments.iter().flatten().map(Segment::rank).collect();
        (tier, ranks, self.method.is_some())
    }
}

impl Api {
    fn select(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(&CompiledRoute, BTreeMap<String, String>)> {
        let raw_segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        self.routes
            .iter()
            .filter(|r| r.method.as_deref().is_none_or(|m| m == method))
            .filter_map(|r| r.match_path(&raw_segments).map(|p| (r, p)))
            .max_by(|(a, _), (b, _)| a.specificity().cmp(&b.specificity()))
    }
}

/// Percent-decodes `%XX` sequences (a `+` stays a `+`); invalid UTF-8 is replaced.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

// ---------------------------------------------------------------------------------------
// The JWT authorizer

/// A claim value as the HTTP API JWT authorizer passes it: strings as they are, numbers in
/// decimal, booleans `true`/`false`, arrays `[a b c]`, objects as JSON.
pub fn stringify_claim(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(stringify_claim)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Value::Object(_) => value.to_string(),
    }
}

/// `requestContext.authorizer` for verified claims.
fn authorizer_context(claims: &Map<String, Value>) -> Value {
    let string_claims: Map<String, Value> = claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(stringify_claim(v))))
        .collect();
    let scopes = match claims.get("scope") {
        Some(Value::String(s)) => Value::Array(
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(|s| json!(s))
                .collect(),
        ),
        Some(Value::Array(items)) => Value::Array(
            items
                .iter()
                .filter_map(|v| v.as_str().map(|s| json!(s)))
                .collect(),
        ),
        _ => Value::Null,
    };
    json!({ "jwt": { "claims": string_claims, "scopes": scopes } })
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, jwt::JwtError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(jwt::JwtError::Missing)?
        .to_str()
        .map_err(|_| jwt::JwtError::Malformed("authorization header is not ASCII"))?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(jwt::JwtError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(jwt::JwtError::Missing);
    }
    Ok(token.trim())
}

// ---------------------------------------------------------------------------------------
// The request → event mapping

fn header_str(value: &HeaderValue) -> String {
    match value.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

/// `headers` (lowercase names, repeated ones joined with `,`, without `cookie`) and
/// `cookies` (the Cookie headers split into `name=value` items).
fn map_headers(headers: &HeaderMap, source_ip: &str) -> (Map<String, Value>, Vec<String>) {
    let mut joined: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in headers {
        let value = header_str(value);
        if name == COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        joined
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    // What API Gateway adds on its way to the integration.
    joined
        .entry("x-forwarded-for".to_owned())
        .and_modify(|v| {
            v.push_str(", ");
            v.push_str(source_ip);
        })
        .or_insert_with(|| source_ip.to_owned());
    joined
        .entry("x-forwarded-proto".to_owned())
        .or_insert_with(|| "http".to_owned());
    let map = joined
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    (map, cookies)
}

/// `queryStringParameters`: decoded, repeated keys joined with `,`.
fn map_query(raw: &str) -> Map<String, Value> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        params
            .entry(k)
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    params
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// Whether a request body of this content type is passed as text (else base64).
fn is_text_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() || essence.starts_with("text/") {
        return true;
    }
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    subtype.ends_with("+json")
        || subtype.ends_with("+xml")
        || matches!(
            subtype,
            "json"
                | "xml"
                | "x-www-form-urlencoded"
                | "javascript"
                | "ecmascript"
                | "graphql"
                | "yaml"
                | "x-yaml"
                | "x-ndjson"
                | "ndjson"
                | "jwt"
        )
}

/// `body` and `isBase64Encoded`.
fn map_body(body: &[u8], content_type: Option<&str>) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    if is_text_content_type(content_type)
        && let Ok(text) = std::str::from_utf8(body)
    {
        return (Some(text.to_owned()), false);
    }
    (Some(BASE64.encode(body)), true)
}

struct RequestParts<'a> {
    method: &'a str,
    raw_path: &'a str,
    raw_query: &'a str,
    headers: &'a HeaderMap,
    source_ip: IpAddr,
    request_id: &'a str,
    now: chrono::DateTime<chrono::Utc>,
}

fn build_event(
    req: &RequestParts<'_>,
    route_key: &str,
    path_params: &BTreeMap<String, String>,
    authorizer: Option<Value>,
    body: &[u8],
) -> Value {
    let source_ip = req.source_ip.to_string();
    let (headers, cookies) = map_headers(req.headers, &source_ip);
    let host = req
        .headers
        .get(axum::http::header::HOST)
        .map(header_str)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let domain_prefix = host
        .split(':')
        .next()
        .unwrap_or_default()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let user_agent = req
        .headers
        .get(axum::http::header::USER_AGENT)
        .map(header_str)
        .unwrap_or_default();
    let content_type = req.headers.get(CONTENT_TYPE).map(header_str);
    let (body, is_base64) = map_body(body, content_type.as_deref());

    let mut request_context = json!({
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": domain_prefix,
        "http": {
            "method": req.method,
            "path": req.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": user_agent,
        },
        "requestId": req.request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": req.now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
        "timeEpoch": req.now.timestamp_millis(),
    });
    if let Some(authorizer) = authorizer {
        request_context["authorizer"] = authorizer;
    }

    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": req.raw_path,
        "rawQueryString": req.raw_query,
        "headers": headers,
        "requestContext": request_context,
        "isBase64Encoded": is_base64,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    let query = map_query(req.raw_query);
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !path_params.is_empty() {
        event["pathParameters"] = json!(path_params);
    }
    if let Some(body) = body {
        event["body"] = Value::String(body);
    }
    event
}

// ---------------------------------------------------------------------------------------
// The function result → response mapping

fn message(status: StatusCode, text: &str) -> Response {
    let mut response = Response::new(Body::from(json!({ "message": text }).to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn header_value_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

fn append_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let value =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
    headers.append(name, value);
    Ok(())
}

/// Maps the function's result as API Gateway does for payload format 2.0. `Err` is the
/// reason the result is a malformed proxy response (answered with 500).
fn map_result(result: Value) -> Result<Response, String> {
    let Value::Object(object) = &result else {
        return Ok(inferred(&result));
    };
    let Some(status) = object.get("statusCode") else {
        return Ok(inferred(&result));
    };
    let status = status
        .as_u64()
        .or_else(|| status.as_str().and_then(|s| s.parse().ok()))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("invalid statusCode {status}"))?;

    let is_base64 = match object.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("invalid isBase64Encoded {other}")),
    };
    let body = match object.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if is_base64 => BASE64
            .decode(s.trim())
            .map_err(|e| format!("body is not valid base64: {e}"))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(_) => return Err("body is not a string".to_owned()),
    };

    let mut headers = HeaderMap::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let value = header_value_string(value)
                    .ok_or_else(|| format!("header {name} is not a string"))?;
                append_header(&mut headers, name, &value)?;
            }
        }
        Some(_) => return Err("headers is not an object".to_owned()),
    }
    match object.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, values) in map {
                let values = values
                    .as_array()
                    .ok_or_else(|| format!("multiValueHeaders.{name} is not an array"))?;
                for value in values {
                    let value = header_value_string(value)
                        .ok_or_else(|| format!("multiValueHeaders.{name} has a non-string"))?;
                    append_header(&mut headers, name, &value)?;
                }
            }
        }
        Some(_) => return Err("multiValueHeaders is not an object".to_owned()),
    }
    match object.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let cookie = cookie
                    .as_str()
                    .ok_or_else(|| "cookies has a non-string".to_owned())?;
                append_header(&mut headers, SET_COOKIE.as_str(), cookie)?;
            }
        }
        Some(_) => return Err("cookies is not an array".to_owned()),
    }
    headers.remove(CONTENT_LENGTH);

    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A result without `statusCode`: 200, `application/json`, the result as the body.
fn inferred(result: &Value) -> Response {
    let mut response = Response::new(Body::from(result.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

// ---------------------------------------------------------------------------------------
// The handler

enum BodyError {
    TooLarge,
    Broken,
}

async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// What the request log line reports besides method, status and latency.
struct Outcome {
    route_key: String,
    function: String,
    response: Response,
}

async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().as_str().to_owned();
    let outcome = process(&api, req, &request_id).await;
    let mut response = outcome.response;
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("apigw-requestid", id);
    }
    tracing::info!(
        target: "local_runtime::http_api",
        method = %method,
        route_key = %outcome.route_key,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_millis() as u64,
        function = %outcome.function,
        request_id = %request_id,
        "http api request"
    );
    response
}

async fn process(api: &Api, req: Request, request_id: &str) -> Outcome {
    let now = chrono::Utc::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str();
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");

    let Some((route, path_params)) = api.select(method, raw_path) else {
        return Outcome {
            route_key: "-".to_owned(),
            function: "-".to_owned(),
            response: message(StatusCode::NOT_FOUND, "Not Found"),
        };
    };
    let outcome = |response| Outcome {
        route_key: route.route_key.clone(),
        function: route.spec.function.clone(),
        response,
    };

    let declared_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > api.max_body_bytes as u64) {
        return outcome(too_large());
    }

    let authorizer = if route.spec.protected {
        let claims = bearer_token(&parts.headers)
            .and_then(|token| jwt::verify(&api.jwt_secret, token, api.audience.as_deref()));
        match claims {
            Ok(claims) => Some(authorizer_context(&claims)),
            Err(why) => {
                tracing::debug!(route_key = %route.route_key, reason = %why, "JWT authorizer refused the request");
                let mut response = message(StatusCode::UNAUTHORIZED, "Unauthorized");
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return outcome(response);
            }
        }
    } else {
        None
    };

    let body = match read_body(body, api.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return outcome(too_large()),
        Err(BodyError::Broken) => {
            return outcome(message(StatusCode::BAD_REQUEST, "Bad Request"));
        }
    };

    let source_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let request = RequestParts {
        method,
        raw_path,
        raw_query,
        headers: &parts.headers,
        source_ip,
        request_id,
        now,
    };
    let event = build_event(&request, &route.route_key, &path_params, authorizer, &body);

    let response = match api.invoker.invoke(&route.spec.function, event).await {
        Ok(result) => map_result(result).unwrap_or_else(|why| {
            tracing::error!(function = %route.spec.function, request_id, why = %why, "malformed Lambda proxy response");
            message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }),
        Err(error) => {
            tracing::error!(function = %route.spec.function, request_id, error = %error, "invocation failed");
            match error {
                InvokeError::Timeout { .. } => {
                    message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                }
                _ => message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            }
        }
    };
    outcome(response)
}

fn too_large() -> Response {
    message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use aws_lambda_events::apigw::ApiGatewayV2httpRequest;

    use super::*;

    const SECRET: &str = "test-secret";

    type Reply = dyn Fn(&str, &Value) -> Result<Value, InvokeError> + Send + Sync;

    /// Records every invocation and answers with `reply`.
    struct FakeInvoker {
        calls: Mutex<Vec<(String, Value)>>,
        reply: Box<Reply>,
    }

    #[async_trait]
    impl Invoke for FakeInvoker {
        async fn invoke(&self, function: &str, payload: Value) -> Result<Value, InvokeError> {
            let result = (self.reply)(function, &payload);
            self.calls
                .lock()
                .unwrap()
                .push((function.to_owned(), payload));
            result
        }
    }

    struct TestApi {
        base: String,
        fake: Arc<FakeInvoker>,
        client: reqwest::Client,
    }

    impl TestApi {
        fn calls(&self) -> Vec<(String, Value)> {
            self.fake.calls.lock().unwrap().clone()
        }
        fn last_event(&self) -> Value {
            self.calls().last().expect("no invocation").1.clone()
        }
        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }
        async fn get(&self, path: &str) -> reqwest::Response {
            self.client.get(self.url(path)).send().await.unwrap()
        }
    }

    fn routes() -> Vec<RouteSpec> {
        vec![
            RouteSpec::new("GetItem", "GET", "/v1/items/{id}", false),
            RouteSpec::new("AnyItem", "ANY", "/v1/items/{id}", false),
            RouteSpec::new("Special", "GET", "/v1/items/special", false),
            RouteSpec::new("SubItem", "GET", "/v1/items/{id}/{sub}", false),
            RouteSpec::new("Files", "GET", "/v1/files/{path+}", false),
            RouteSpec::new("Proxy", "ANY", "/{proxy+}", false),
            RouteSpec::new("Health", "GET", "/healthz", false),
            RouteSpec::new("Me", "GET", "/v1/me", true),
            RouteSpec::new("Echo", "POST", "/v1/echo", false),
            RouteSpec::new("Resp", "GET", "/v1/resp", false),
            RouteSpec::new("Bin", "GET", "/v1/bin", false),
            RouteSpec::new("Plain", "GET", "/v1/plain", false),
            RouteSpec::new("Fail", "GET", "/v1/fail", false),
            RouteSpec::new("Slow", "GET", "/v1/slow", false),
            RouteSpec::new("Gone", "GET", "/v1/gone", false),
            RouteSpec::new("BadB64", "GET", "/v1/bad-b64", false),
            RouteSpec::new("BadStatus", "GET", "/v1/bad-status", false),
        ]
    }

    fn reply(function: &str, _event: &Value) -> Result<Value, InvokeError> {
        match function {
            "Resp" => Ok(json!({
                "statusCode": 201,
                "headers": {"content-type": "text/plain", "x-a": "1", "x-n": 7},
                "multiValueHeaders": {"x-m": ["a", "b"]},
                "cookies": ["a=1; Path=/; HttpOnly", "b=2"],
                "body": "created",
            })),
            "Bin" => Ok(json!({
                "statusCode": 200,
                "headers": {"content-type": "application/octet-stream"},
                "body": BASE64.encode([0u8, 159, 146, 150, 255]),
                "isBase64Encoded": true,
            })),
            "Plain" => Ok(json!([1, "two", {"three": 3}])),
            "Fail" => Err(InvokeError::Handler {
                function: function.to_owned(),
                error_type: "Panic".to_owned(),
                message: "SECRET-DETAIL db password hunter2".to_owned(),
            }),
            "Slow" => Err(InvokeError::Timeout {
                function: function.to_owned(),
                seconds: 3,
            }),
            "Gone" => Err(InvokeError::Crashed {
                function: function.to_owned(),
                reason: "SECRET-DETAIL exit 101".to_owned(),
            }),
            "BadB64" => Ok(json!({"statusCode": 200, "body": "%%%", "isBase64Encoded": true})),
            "BadStatus" => Ok(json!({"statusCode": "nope", "body": "x"})),
            other => Ok(json!({"function": other})),
        }
    }

    async fn serve_with(config: HttpApiConfig) -> TestApi {
        serve_with_reply(config, Box::new(reply)).await
    }

    async fn serve_with_reply(config: HttpApiConfig, reply: Box<Reply>) -> TestApi {
        let fake = Arc::new(FakeInvoker {
            calls: Mutex::new(Vec::new()),
            reply,
        });
        let app = router(config, fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        TestApi {
            base: format!("http://{addr}"),
            fake,
            client: reqwest::Client::new(),
        }
    }

    async fn serve() -> TestApi {
        serve_with(HttpApiConfig {
            routes: routes(),
            jwt_secret: SECRET.to_owned(),
            audience: None,
            max_body_bytes: 1024,
        })
        .await
    }

    async fn json_body(response: reqwest::Response) -> Value {
        response.json().await.unwrap()
    }

    fn b64url(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[tokio::test]
    async fn route_precedence() {
        let api = serve().await;
        let cases = [
            (
                "GET",
                "/v1/items/special",
                "Special",
                "GET /v1/items/special",
            ),
            ("GET", "/v1/items/42", "GetItem", "GET /v1/items/{id}"),
            ("DELETE", "/v1/items/42", "AnyItem", "ANY /v1/items/{id}"),
            ("HEAD", "/v1/items/42", "AnyItem", "ANY /v1/items/{id}"),
            (
                "DELETE",
                "/v1/items/special",
                "AnyItem",
                "ANY /v1/items/{id}",
            ),
            (
                "GET",
                "/v1/items/42/x",
                "SubItem",
                "GET /v1/items/{id}/{sub}",
            ),
            ("POST", "/v1/items/42/x", "Proxy", "ANY /{proxy+}"),
            ("GET", "/v1/items/42/x/y", "Proxy", "ANY /{proxy+}"),
            ("GET", "/v1/files/a/b.txt", "Files", "GET /v1/files/{path+}"),
            ("POST", "/v1/files/a/b.txt", "Proxy", "ANY /{proxy+}"),
            ("GET", "/v1/files", "Proxy", "ANY /{proxy+}"),
            ("GET", "/healthz", "Health", "GET /healthz"),
            ("POST", "/healthz", "Proxy", "ANY /{proxy+}"),
            ("OPTIONS", "/v1/echo", "Proxy", "ANY /{proxy+}"),
        ];
        for (i, (method, path, function, route_key)) in cases.into_iter().enumerate() {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let response = api
                .client
                .request(method.clone(), api.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} {path}");
            let calls = api.calls();
            assert_eq!(calls.len(), i + 1, "{method} {path}");
            let (called, event) = calls.last().unwrap();
            assert_eq!(called, function, "{method} {path}");
            assert_eq!(event["routeKey"], route_key, "{method} {path}");
            assert_eq!(event["requestContext"]["routeKey"], route_key);
            assert_eq!(event["requestContext"]["http"]["method"], method.as_str());
        }
    }

    #[tokio::test]
    async fn not_found_is_api_gateway_shaped() {
        let api = serve_with(HttpApiConfig {
            routes: vec![RouteSpec::new("GetItem", "GET", "/v1/items/{id}", false)],
            jwt_secret: SECRET.to_owned(),
            ..HttpApiConfig::default()
        })
        .await;
        for path in ["/", "/v1/items", "/v1/items/", "/v1/items/1/2", "/nope"] {
            let response = api.get(path).await;
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(json_body(response).await, json!({"message": "Not Found"}));
        }
        let response = api
            .client
            .post(api.url("/v1/items/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert!(api.calls().is_empty());
    }

    #[tokio::test]
    async fn default_route_catches_the_rest() {
        let api = serve_with(HttpApiConfig {
            routes: vec![
                RouteSpec::new("Default", "ANY", "$default", false),
                RouteSpec::new("Proxy", "GET", "/api/{proxy+}", false),
            ],
            jwt_secret: SECRET.to_owned(),
            ..HttpApiConfig::default()
        })
        .await;
        api.get("/api/x").await;
        api.get("/").await;
        let calls = api.calls();
        assert_eq!(calls[0].0, "Proxy");
        assert_eq!(calls[1].0, "Default");
        assert_eq!(calls[1].1["routeKey"], "$default");
        assert_eq!(calls[1].1["requestContext"]["routeKey"], "$default");
        assert!(calls[1].1.get("pathParameters").is_none());
    }

    #[tokio::test]
    async fn path_parameters_are_decoded() {
        let api = serve().await;
        api.get("/v1/items/a%20b%2Fc%C3%A9+d").await;
        let event = api.last_event();
        assert_eq!(event["pathParameters"], json!({"id": "a b/cé+d"}));
        assert_eq!(event["rawPath"], "/v1/items/a%20b%2Fc%C3%A9+d");
        assert_eq!(
            event["requestContext"]["http"]["path"],
            "/v1/items/a%20b%2Fc%C3%A9+d"
        );

        api.get("/v1/files/dir/sub%20dir/f.txt").await;
        assert_eq!(
            api.last_event()["pathParameters"],
            json!({"path": "dir/sub dir/f.txt"})
        );

        api.get("/v1/items/1/two").await;
        assert_eq!(
            api.last_event()["pathParameters"],
            json!({"id": "1", "sub": "two"})
        );

        api.get("/healthz").await;
        let event = api.last_event();
        assert!(event.get("pathParameters").is_none());
        assert!(event.get("queryStringParameters").is_none());
        assert!(event.get("cookies").is_none());
        assert!(event.get("body").is_none());
        assert_eq!(event["rawQueryString"], "");
        assert_eq!(event["isBase64Encoded"], false);
    }

    #[tokio::test]
    async fn query_headers_and_cookies_mapping() {
        let api = serve().await;
        api.client
            .get(api.url("/v1/items/1?a=1&b=x%20y&a=2&flag&c=%E2%82%AC"))
            .header("X-Custom", "one")
            .header("x-custom", "two")
            .header("Cookie", "s=abc; theme=dark")
            .header("User-Agent", "test-agent/1.0")
            .send()
            .await
            .unwrap();
        let event = api.last_event();
        assert_eq!(event["rawQueryString"], "a=1&b=x%20y&a=2&flag&c=%E2%82%AC");
        assert_eq!(
            event["queryStringParameters"],
            json!({"a": "1,2", "b": "x y", "flag": "", "c": "€"})
        );
        assert_eq!(event["headers"]["x-custom"], "one,two");
        assert_eq!(event["headers"]["user-agent"], "test-agent/1.0");
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(event["cookies"], json!(["s=abc", "theme=dark"]));
        for name in event["headers"].as_object().unwrap().keys() {
            assert_eq!(name, &name.to_lowercase());
        }
        let host = event["headers"]["host"].as_str().unwrap().to_owned();
        assert!(api.base.ends_with(&host));

        let ctx = &event["requestContext"];
        assert_eq!(ctx["accountId"], "123456789012");
        assert_eq!(ctx["apiId"], "local");
        assert_eq!(ctx["domainName"], host.as_str());
        assert_eq!(ctx["domainPrefix"], "127");
        assert_eq!(ctx["stage"], "$default");
        assert_eq!(ctx["http"]["protocol"], "HTTP/1.1");
        assert_eq!(ctx["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(ctx["http"]["userAgent"], "test-agent/1.0");
        assert!(uuid::Uuid::parse_str(ctx["requestId"].as_str().unwrap()).is_ok());
        let time = ctx["time"].as_str().unwrap();
        let parsed = chrono::DateTime::parse_from_str(time, "%d/%b/%Y:%H:%M:%S %z").unwrap();
        assert!(time.ends_with(" +0000"), "{time}");
        let epoch = ctx["timeEpoch"].as_i64().unwrap();
        assert_eq!(parsed.timestamp(), epoch / 1000);
        assert!((chrono::Utc::now().timestamp_millis() - epoch).abs() < 60_000);
        assert!(ctx.get("authorizer").is_none());
        assert_eq!(event["version"], "2.0");
    }

    #[tokio::test]
    async fn event_deserialises_as_aws_lambda_events_v2_request() {
        let api = serve().await;
        let token = jwt::issue(SECRET, "alice", Duration::from_secs(60), None);
        api.client
            .get(api.url("/v1/me?x=1&x=2"))
            .bearer_auth(&token)
            .header("cookie", "a=b")
            .send()
            .await
            .unwrap();
        api.client
            .post(api.url("/v1/echo"))
            .header("content-type", "application/octet-stream")
            .body(vec![1u8, 2, 3])
            .send()
            .await
            .unwrap();
        let calls = api.calls();
        let me: ApiGatewayV2httpRequest = serde_json::from_value(calls[0].1.clone()).unwrap();
        assert_eq!(me.version.as_deref(), Some("2.0"));
        assert_eq!(me.route_key.as_deref(), Some("GET /v1/me"));
        assert_eq!(me.raw_path.as_deref(), Some("/v1/me"));
        assert_eq!(me.raw_query_string.as_deref(), Some("x=1&x=2"));
        assert_eq!(me.cookies, Some(vec!["a=b".to_owned()]));
        assert_eq!(me.query_string_parameters.first("x"), Some("1"));
        assert!(me.headers.get("host").is_some());
        let ctx = &me.request_context;
        assert_eq!(ctx.account_id.as_deref(), Some("123456789012"));
        assert_eq!(ctx.apiid.as_deref(), Some("local"));
        assert_eq!(ctx.stage.as_deref(), Some("$default"));
        assert_eq!(ctx.http.method, axum::http::Method::GET);
        assert_eq!(ctx.http.source_ip.as_deref(), Some("127.0.0.1"));
        let jwt = ctx.authorizer.as_ref().unwrap().jwt.as_ref().unwrap();
        assert_eq!(jwt.claims["sub"], "alice");
        assert_eq!(jwt.scopes, Some(vec!["openbank".to_owned()]));
        assert!(ctx.time_epoch > 0);

        let echo: ApiGatewayV2httpRequest = serde_json::from_value(calls[1].1.clone()).unwrap();
        assert!(echo.is_base64_encoded);
        assert_eq!(echo.body.as_deref(), Some("AQID"));
        assert!(echo.request_context.authorizer.is_none());
        assert_eq!(echo.request_context.http.method, axum::http::Method::POST);
    }

    #[tokio::test]
    async fn bodies_text_and_base64() {
        let api = serve().await;
        let post = |ct: Option<&'static str>, body: Vec<u8>| {
            let mut request = api.client.post(api.url("/v1/echo")).body(body);
            if let Some(ct) = ct {
                request = request.header("content-type", ct);
            }
            request.send()
        };
        post(Some("application/json"), r#"{"a":"é"}"#.as_bytes().to_vec())
            .await
            .unwrap();
        let event = api.last_event();
        assert_eq!(event["body"], r#"{"a":"é"}"#);
        assert_eq!(event["isBase64Encoded"], false);

        post(None, b"plain words".to_vec()).await.unwrap();
        assert_eq!(api.last_event()["body"], "plain words");
        assert_eq!(api.last_event()["isBase64Encoded"], false);

        // Not UTF-8, whatever the content type says.
        post(Some("text/plain"), vec![0xff, 0xfe, 0x00])
            .await
            .unwrap();
        assert_eq!(api.last_event()["body"], BASE64.encode([0xff, 0xfe, 0x00]));
        assert_eq!(api.last_event()["isBase64Encoded"], true);

        // Binary content types, even when the bytes happen to be UTF-8.
        for ct in ["application/octet-stream", "image/png", "application/pdf"] {
            post(Some(ct), b"hello".to_vec()).await.unwrap();
            assert_eq!(api.last_event()["body"], BASE64.encode("hello"), "{ct}");
            assert_eq!(api.last_event()["isBase64Encoded"], true, "{ct}");
        }
        post(
            Some("application/problem+json; charset=utf-8"),
            b"{}".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(api.last_event()["body"], "{}");

        // Empty: no body at all.
        post(Some("application/json"), Vec::new()).await.unwrap();
        assert!(api.last_event().get("body").is_none());
        assert_eq!(api.last_event()["isBase64Encoded"], false);
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413_without_invoking() {
        let api = serve().await;
        let response = api
            .client
            .post(api.url("/v1/echo"))
            .body(vec![b'a'; 1025])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(
            json_body(response).await,
            json!({"message": "Request Entity Too Large"})
        );
        // Chunked, so no content-length to check up front.
        let response = raw_chunked_post(&api.base, "/v1/echo", &[&[b'a'; 600], &[b'b'; 600]]).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("Request Entity Too Large"), "{response}");
        assert!(api.calls().is_empty());
        // Exactly at the limit is fine.
        let response = api
            .client
            .post(api.url("/v1/echo"))
            .body(vec![b'a'; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(api.calls().len(), 1);
    }

    /// POSTs a chunked body over a raw socket and returns the whole response as text.
    async fn raw_chunked_post(base: &str, path: &str, chunks: &[&[u8]]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in chunks {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The server may answer (and close) before reading everything.
        let _ = stream.write_all(&request).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn protected_route_rejects_bad_tokens_without_invoking() {
        let api = serve().await;
        let now = chrono::Utc::now().timestamp();
        let sign = |claims: Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let alg_none = format!(
            "{}.{}.",
            b64url(&json!({"alg": "none", "typ": "JWT"})),
            b64url(&json!({"sub": "alice", "iss": "local", "exp": now + 600}))
        );
        let bad: Vec<(&str, Option<String>)> = vec![
            ("missing", None),
            ("garbage", Some("Bearer not-a-jwt".to_owned())),
            ("empty bearer", Some("Bearer ".to_owned())),
            (
                "wrong scheme",
                Some(format!(
                    "Basic {}",
                    jwt::issue(SECRET, "alice", Duration::from_secs(60), None)
                )),
            ),
            (
                "wrong secret",
                Some(format!(
                    "Bearer {}",
                    jwt::issue("other", "alice", Duration::from_secs(60), None)
                )),
            ),
            (
                "expired",
                Some(format!(
                    "Bearer {}",
                    sign(json!({"sub": "alice", "iss": "local", "exp": now - 60}))
                )),
            ),
            (
                "other issuer",
                Some(format!(
                    "Bearer {}",
                    sign(json!({"sub": "alice", "iss": "https://idp.example", "exp": now + 600}))
                )),
            ),
            ("alg none", Some(format!("Bearer {alg_none}"))),
        ];
        for (case, authorization) in bad {
            let mut request = api.client.get(api.url("/v1/me"));
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{case}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
            assert_eq!(
                json_body(response).await,
                json!({"message": "Unauthorized"}),
                "{case}"
            );
        }
        assert!(api.calls().is_empty());

        // And a good one goes through.
        let token = jwt::issue(SECRET, "alice", Duration::from_secs(60), None);
        let response = api
            .client
            .get(api.url("/v1/me"))
            .header("authorization", format!("bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(api.calls().len(), 1);
    }

    #[tokio::test]
    async fn audience_is_enforced_when_configured() {
        let api = serve_with(HttpApiConfig {
            routes: routes(),
            jwt_secret: SECRET.to_owned(),
            audience: Some("openbank-api".to_owned()),
            max_body_bytes: 1024,
        })
        .await;
        let wrong = jwt::issue(SECRET, "alice", Duration::from_secs(60), Some("other"));
        let none = jwt::issue(SECRET, "alice", Duration::from_secs(60), None);
        let good = jwt::issue(
            SECRET,
            "alice",
            Duration::from_secs(60),
            Some("openbank-api"),
        );
        for (token, status) in [(wrong, 401), (none, 401), (good, 200)] {
            let response = api
                .client
                .get(api.url("/v1/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status);
        }
        assert_eq!(
            api.last_event()["requestContext"]["authorizer"]["jwt"]["claims"]["aud"],
            "openbank-api"
        );
    }

    #[tokio::test]
    async fn claims_reach_the_function_stringified() {
        let api = serve().await;
        let now = chrono::Utc::now().timestamp();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({
                "sub": "alice", "iss": "local", "exp": now + 600, "iat": now,
                "scope": "openbank read:accounts", "admin": false, "ratio": 1.5,
                "groups": ["a", "b", "c"], "addr": {"city": "Berlin"},
            }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        api.client
            .get(api.url("/v1/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let event = api.last_event();
        let jwt = &event["requestContext"]["authorizer"]["jwt"];
        assert_eq!(
            jwt["claims"],
            json!({
                "sub": "alice", "iss": "local", "exp": (now + 600).to_string(),
                "iat": now.to_string(), "scope": "openbank read:accounts",
                "admin": "false", "ratio": "1.5", "groups": "[a b c]",
                "addr": r#"{"city":"Berlin"}"#,
            })
        );
        assert_eq!(jwt["scopes"], json!(["openbank", "read:accounts"]));
        // The Authorization header is passed through, as API Gateway does.
        assert_eq!(event["headers"]["authorization"], format!("Bearer {token}"));

        // No scope claim → scopes null.
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "bob", "iss": "local", "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        api.client
            .get(api.url("/v1/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let event = api.last_event();
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["scopes"],
            Value::Null
        );
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
            "bob"
        );
    }

    #[test]
    fn stringify_claim_like_api_gateway() {
        assert_eq!(stringify_claim(&json!("x y")), "x y");
        assert_eq!(stringify_claim(&json!(1700000000)), "1700000000");
        assert_eq!(stringify_claim(&json!(-3)), "-3");
        assert_eq!(stringify_claim(&json!(2.25)), "2.25");
        assert_eq!(stringify_claim(&json!(true)), "true");
        assert_eq!(stringify_claim(&json!(["a", "b", "c"])), "[a b c]");
        assert_eq!(stringify_claim(&json!([1, true, "x"])), "[1 true x]");
        assert_eq!(stringify_claim(&json!([])), "[]");
        assert_eq!(stringify_claim(&json!({"k": [1]})), r#"{"k":[1]}"#);
    }

    #[tokio::test]
    async fn function_response_mapping() {
        let api = serve().await;
        let response = api.get("/v1/resp").await;
        assert_eq!(response.status(), 201);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-a"], "1");
        assert_eq!(headers["x-n"], "7");
        let multi: Vec<_> = headers.get_all("x-m").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/; HttpOnly", "b=2"]);
        assert!(headers.contains_key("apigw-requestid"));
        assert_eq!(response.text().await.unwrap(), "created");

        let response = api.get("/v1/bin").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            [0u8, 159, 146, 150, 255]
        );
    }

    #[tokio::test]
    async fn plain_json_results_are_inferred() {
        let api = serve().await;
        let response = api.get("/v1/plain").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(json_body(response).await, json!([1, "two", {"three": 3}]));

        // An object without statusCode is the body itself.
        let response = api.get("/healthz").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(json_body(response).await, json!({"function": "Health"}));
    }

    #[tokio::test]
    async fn invocation_errors_are_opaque() {
        let api = serve().await;
        for (path, status, text) in [
            ("/v1/fail", 500, "Internal Server Error"),
            ("/v1/gone", 500, "Internal Server Error"),
            ("/v1/slow", 503, "Service Unavailable"),
            ("/v1/bad-b64", 500, "Internal Server Error"),
            ("/v1/bad-status", 500, "Internal Server Error"),
        ] {
            let response = api.get(path).await;
            assert_eq!(response.status(), status, "{path}");
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = response.text().await.unwrap();
            assert!(!body.contains("SECRET-DETAIL"), "{path}: {body}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                json!({"message": text}),
                "{path}"
            );
        }
        // Unknown function (e.g. a route to a function that is not running).
        let api = serve_with_reply(
            HttpApiConfig {
                routes: vec![RouteSpec::new("Missing", "GET", "/m", false)],
                jwt_secret: SECRET.to_owned(),
                ..HttpApiConfig::default()
            },
            Box::new(|f, _| Err(InvokeError::UnknownFunction(f.to_owned()))),
        )
        .await;
        let response = api.get("/m").await;
        assert_eq!(response.status(), 500);
        assert_eq!(
            json_body(response).await,
            json!({"message": "Internal Server Error"})
        );
        assert_eq!(api.calls().len(), 1);
    }

    #[test]
    fn invalid_routes_are_skipped() {
        for (method, path) in [
            ("GET", "no-slash"),
            ("GET", "/{proxy+}/x"),
            ("", "/x"),
            ("GET", "/{}"),
        ] {
            assert!(
                CompiledRoute::compile(&RouteSpec::new("F", method, path, false)).is_err(),
                "{method} {path}"
            );
        }
        assert!(CompiledRoute::compile(&RouteSpec::new("F", "get", "/", false)).is_ok());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn config_debug_hides_the_secret() {
        let config = HttpApiConfig {
            jwt_secret: "super-secret".to_owned(),
            ..HttpApiConfig::default()
        };
        assert!(!format!("{config:?}").contains("super-secret"));
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
    }
}
